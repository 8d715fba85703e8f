//! What llama.cpp's JSON-Schema-to-grammar converter would refuse, found before calling
//! it: its C++ exception's text never crosses the FFI, so without this a user reads only
//! an error code.

use serde_json::Value;

/// The `type` names the converter knows.
const TYPES: [&str; 7] = [
    "string", "number", "integer", "boolean", "object", "array", "null",
];

/// Keywords whose values are data, not schemas: a `{"type": ...}` inside them is a value.
const DATA_KEYWORDS: [&str; 4] = ["enum", "const", "default", "examples"];

/// Most properties one object schema may list. The converter's time grows about with
/// the cube of an object's optional properties (2 000 took 15 s, 3 000 over a minute).
pub const MAX_PROPERTIES: usize = 200;
/// Most properties in the whole schema.
pub const MAX_TOTAL_PROPERTIES: usize = 1000;
/// Most alternatives (`anyOf`, `oneOf`, `allOf` entries, `enum` values) in one place.
pub const MAX_ALTERNATIVES: usize = 500;
/// Deepest nesting of objects and arrays.
pub const MAX_SCHEMA_DEPTH: usize = 64;
/// Most JSON values in the whole schema.
pub const MAX_SCHEMA_NODES: usize = 20_000;

/// Refuses a schema the converter cannot turn into a grammar, or one so complex that
/// converting it would take the host's time and memory (see [`MAX_PROPERTIES`] and the
/// other bounds), saying what and where (a JSON pointer).
pub fn check_schema(schema: &Value) -> Result<(), String> {
    let mut counts = Counts::default();
    walk(schema, &mut String::new(), &mut counts)
}

/// What the walk has seen so far.
#[derive(Default)]
struct Counts {
    nodes: usize,
    properties: usize,
    depth: usize,
}

fn at(pointer: &str) -> &str {
    if pointer.is_empty() { "/" } else { pointer }
}

/// The complexity bounds, checked at each node before its children are walked.
fn check_size(node: &Value, pointer: &str, counts: &mut Counts) -> Result<(), String> {
    counts.nodes += 1;
    if counts.nodes > MAX_SCHEMA_NODES {
        return Err(format!(
            "the JSON Schema has more than {MAX_SCHEMA_NODES} values; the limit is \
             {MAX_SCHEMA_NODES}"
        ));
    }
    if counts.depth > MAX_SCHEMA_DEPTH {
        return Err(format!(
            "the JSON Schema nests more than {MAX_SCHEMA_DEPTH} deep at {}; the limit is \
             {MAX_SCHEMA_DEPTH}",
            at(pointer)
        ));
    }
    let Value::Object(map) = node else {
        return Ok(());
    };
    if let Some(Value::Object(properties)) = map.get("properties") {
        let n = properties.len();
        if n > MAX_PROPERTIES {
            return Err(format!(
                "the JSON Schema object at {} has {n} properties; the limit is \
                 {MAX_PROPERTIES} per object",
                at(pointer)
            ));
        }
        counts.properties += n;
        if counts.properties > MAX_TOTAL_PROPERTIES {
            return Err(format!(
                "the JSON Schema has more than {MAX_TOTAL_PROPERTIES} properties in all; the \
                 limit is {MAX_TOTAL_PROPERTIES}"
            ));
        }
    }
    for keyword in ["anyOf", "oneOf", "allOf", "enum"] {
        if let Some(Value::Array(list)) = map.get(keyword)
            && list.len() > MAX_ALTERNATIVES
        {
            return Err(format!(
                "the JSON Schema's {keyword} at {} has {} entries; the limit is \
                 {MAX_ALTERNATIVES}",
                at(pointer),
                list.len()
            ));
        }
    }
    Ok(())
}

fn walk(node: &Value, pointer: &mut String, counts: &mut Counts) -> Result<(), String> {
    check_size(node, pointer, counts)?;
    counts.depth += 1;
    let walked = walk_children(node, pointer, counts);
    counts.depth -= 1;
    walked
}

fn walk_children(node: &Value, pointer: &mut String, counts: &mut Counts) -> Result<(), String> {
    match node {
        Value::Object(map) => {
            if let Some(ty) = map.get("type") {
                check_type(ty, pointer)?;
            }
            for (key, value) in map {
                if DATA_KEYWORDS.contains(&key.as_str()) {
                    continue;
                }
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                walk(value, pointer, counts)?;
                pointer.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, value) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                walk(value, pointer, counts)?;
                pointer.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

/// `type` is one name or a list of names; any other value (an object: a property named
/// `type` inside `properties`) is not a type and is left to the walk.
fn check_type(ty: &Value, pointer: &str) -> Result<(), String> {
    let names: Vec<&Value> = match ty {
        Value::String(_) => vec![ty],
        Value::Array(list) => list.iter().collect(),
        _ => return Ok(()),
    };
    for name in names {
        let ok = name.as_str().is_some_and(|n| TYPES.contains(&n));
        if !ok {
            return Err(format!(
                "unsupported JSON Schema type {name} at {} (the types are {})",
                at(pointer),
                TYPES.join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(schema: &str) -> Result<(), String> {
        check_schema(&serde_json::from_str(schema).unwrap())
    }

    #[test]
    fn known_types_pass() {
        assert_eq!(
            check(
                r#"{"type":"object","properties":{
                    "type":{"type":["string","null"]},
                    "age":{"type":"integer","default":{"type":"nosuchtype"}},
                    "tags":{"type":"array","items":{"type":"string"},"enum":[{"type":"x"}]}
                },"required":["type"]}"#
            ),
            Ok(())
        );
        assert_eq!(check("true"), Ok(()));
    }

    #[test]
    fn a_schema_too_complex_to_convert_is_refused_before_conversion() {
        let object = |n: usize| {
            let props: Vec<String> = (0..n)
                .map(|i| format!(r#""p{i}":{{"type":"string"}}"#))
                .collect();
            format!(
                r#"{{"type":"object","properties":{{{}}}}}"#,
                props.join(",")
            )
        };
        assert_eq!(check(&object(MAX_PROPERTIES)), Ok(()));
        let e = check(&object(2000)).unwrap_err();
        assert!(
            e.contains("has 2000 properties; the limit is 200 per object"),
            "{e}"
        );
        let many: Vec<String> = (0..6)
            .map(|i| format!(r#""o{i}":{}"#, object(190)))
            .collect();
        let e = check(&format!(
            r#"{{"type":"object","properties":{{{}}}}}"#,
            many.join(",")
        ))
        .unwrap_err();
        assert!(e.contains("more than 1000 properties in all"), "{e}");
        let alternatives: Vec<&str> = vec![r#"{"type":"string"}"#; 501];
        let e = check(&format!(r#"{{"anyOf":[{}]}}"#, alternatives.join(","))).unwrap_err();
        assert!(
            e.contains("anyOf at / has 501 entries; the limit is 500"),
            "{e}"
        );
        let deep = format!(
            "{}{}",
            r#"{"items":"#.repeat(70),
            "{}".to_owned() + &"}".repeat(70)
        );
        let e = check(&deep).unwrap_err();
        assert!(e.contains("nests more than 64 deep"), "{e}");
    }

    #[test]
    fn an_unknown_type_is_named_with_its_pointer() {
        let e = check(r#"{"type":"nosuchtype"}"#).unwrap_err();
        assert!(
            e.starts_with(r#"unsupported JSON Schema type "nosuchtype" at /"#),
            "{e}"
        );
        let e = check(r#"{"type":"object","properties":{"a/b":{"type":"object","properties":{"age":{"type":["integer","int"]}}}}}"#)
            .unwrap_err();
        assert!(
            e.starts_with(
                r#"unsupported JSON Schema type "int" at /properties/a~1b/properties/age"#
            ),
            "{e}"
        );
        let e = check(r#"{"anyOf":[{"type":"string"},{"type":5}]}"#);
        assert_eq!(
            e,
            Ok(()),
            "a non-string, non-list type is left to llama.cpp"
        );
        let e = check(r#"{"anyOf":[{"type":"string"},{"type":[5]}]}"#).unwrap_err();
        assert!(e.contains("type 5 at /anyOf/1"), "{e}");
    }
}
