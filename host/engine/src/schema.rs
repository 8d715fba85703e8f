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

/// Refuses a schema the converter cannot turn into a grammar, saying what and where (a
/// JSON pointer).
pub fn check_schema(schema: &Value) -> Result<(), String> {
    walk(schema, &mut String::new())
}

fn walk(node: &Value, pointer: &mut String) -> Result<(), String> {
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
                walk(value, pointer)?;
                pointer.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, value) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                walk(value, pointer)?;
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
            let at = if pointer.is_empty() { "/" } else { pointer };
            return Err(format!(
                "unsupported JSON Schema type {name} at {at} (the types are {})",
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
