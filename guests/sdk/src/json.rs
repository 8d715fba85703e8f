//! JSON in model output: find it, and check it against a JSON Schema.
//!
//! [`validate`] covers the part of JSON Schema that describes model output: `type`,
//! `enum`, `const`, `properties`, `required`, `additionalProperties: false`, `items`,
//! `minItems`/`maxItems`, `minLength`/`maxLength`, `minimum`/`maximum`,
//! `exclusiveMinimum`/`exclusiveMaximum`, `anyOf`, `allOf`, `oneOf`. Other keywords
//! (`pattern`, `format`, `$ref`, ...) are not checked.

use serde_json::{Map, Value};

/// The JSON value in `text`: the whole text if it parses, else the first `{...}` or
/// `[...]` inside it that does (models like to add prose around JSON), trying the first
/// 64 brackets.
pub fn extract(text: &str) -> Option<Value> {
    let trimmed = text.trim();
    if let Ok(v) = serde_json::from_str(trimmed) {
        return Some(v);
    }
    // Bounded, so a text full of brackets costs little.
    let starts = text
        .char_indices()
        .filter(|(_, c)| *c == '{' || *c == '[')
        .take(64);
    for (start, open) in starts {
        if let Some(end) = matching_close(&text[start..], open)
            && let Ok(v) = serde_json::from_str(&text[start..start + end])
        {
            return Some(v);
        }
    }
    None
}

/// Byte length of the balanced `{...}`/`[...]` at the start of `s`, strings respected.
fn matching_close(s: &str, open: char) -> Option<usize> {
    let close = if open == '{' { '}' } else { ']' };
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, c) in s.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            c if c == open => depth += 1,
            c if c == close => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + c.len_utf8());
                }
            }
            _ => {}
        }
    }
    None
}

/// Checks `value` against `schema`; the error names the first offending path.
pub fn validate(value: &Value, schema: &Value) -> Result<(), String> {
    check(value, schema, "$")
}

fn check(v: &Value, schema: &Value, path: &str) -> Result<(), String> {
    let s = match schema {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return Err(format!("{path}: no value is allowed here")),
        Value::Object(s) => s,
        _ => return Ok(()),
    };
    if let Some(t) = s.get("type") {
        let allowed: Vec<&str> = match t {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !allowed.is_empty() && !allowed.iter().any(|t| has_type(v, t)) {
            return Err(format!(
                "{path}: expected {}, got {}",
                allowed.join(" or "),
                type_name(v)
            ));
        }
    }
    if let Some(Value::Array(options)) = s.get("enum")
        && !options.iter().any(|o| same(o, v))
    {
        return Err(format!(
            "{path}: {v} is not one of {}",
            Value::from(options.clone())
        ));
    }
    if let Some(c) = s.get("const")
        && !same(c, v)
    {
        return Err(format!("{path}: expected {c}, got {v}"));
    }
    match v {
        Value::Object(obj) => check_object(obj, s, path)?,
        Value::Array(items) => check_array(items, s, path)?,
        Value::String(text) => {
            let n = text.chars().count() as u64;
            if let Some(min) = s.get("minLength").and_then(Value::as_u64)
                && n < min
            {
                return Err(format!("{path}: {n} characters, fewer than {min}"));
            }
            if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
                && n > max
            {
                return Err(format!("{path}: {n} characters, more than {max}"));
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            let bound = |k: &str| s.get(k).and_then(Value::as_f64);
            if bound("minimum").is_some_and(|m| x < m)
                || bound("maximum").is_some_and(|m| x > m)
                || bound("exclusiveMinimum").is_some_and(|m| x <= m)
                || bound("exclusiveMaximum").is_some_and(|m| x >= m)
            {
                return Err(format!("{path}: {n} is out of range"));
            }
        }
        _ => {}
    }
    if let Some(Value::Array(all)) = s.get("allOf") {
        for sub in all {
            check(v, sub, path)?;
        }
    }
    if let Some(Value::Array(any)) = s.get("anyOf")
        && !any.iter().any(|sub| check(v, sub, path).is_ok())
    {
        return Err(format!("{path}: matches none of anyOf"));
    }
    if let Some(Value::Array(one)) = s.get("oneOf") {
        let n = one.iter().filter(|sub| check(v, sub, path).is_ok()).count();
        if n != 1 {
            return Err(format!("{path}: matches {n} of oneOf, not exactly one"));
        }
    }
    Ok(())
}

fn check_object(
    obj: &Map<String, Value>,
    s: &Map<String, Value>,
    path: &str,
) -> Result<(), String> {
    if let Some(Value::Array(required)) = s.get("required") {
        for key in required.iter().filter_map(Value::as_str) {
            if !obj.contains_key(key) {
                return Err(format!("{path}: missing required property {key:?}"));
            }
        }
    }
    let props = s.get("properties").and_then(Value::as_object);
    for (key, value) in obj {
        match props.and_then(|p| p.get(key)) {
            Some(sub) => check(value, sub, &format!("{path}.{key}"))?,
            None => match s.get("additionalProperties") {
                Some(Value::Bool(false)) => {
                    return Err(format!("{path}: unexpected property {key:?}"));
                }
                Some(sub @ Value::Object(_)) => check(value, sub, &format!("{path}.{key}"))?,
                _ => {}
            },
        }
    }
    Ok(())
}

fn check_array(items: &[Value], s: &Map<String, Value>, path: &str) -> Result<(), String> {
    let n = items.len() as u64;
    if let Some(min) = s.get("minItems").and_then(Value::as_u64)
        && n < min
    {
        return Err(format!("{path}: {n} items, fewer than {min}"));
    }
    if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
        && n > max
    {
        return Err(format!("{path}: {n} items, more than {max}"));
    }
    if let Some(item_schema) = s.get("items") {
        for (i, item) in items.iter().enumerate() {
            check(item, item_schema, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

fn has_type(v: &Value, t: &str) -> bool {
    match t {
        "integer" => v.as_f64().is_some_and(|x| x.fract() == 0.0),
        "number" => v.is_number(),
        other => type_name(v) == other,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// JSON equality with 1 == 1.0.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extract_finds_json_inside_prose() {
        assert_eq!(extract(" {\"a\":1} "), Some(json!({"a": 1})));
        assert_eq!(
            extract("Sure! Here: {\"best\": 2, \"why\": \"a } in text\"} Done."),
            Some(json!({"best": 2, "why": "a } in text"}))
        );
        assert_eq!(extract("list: [1, [2]] end"), Some(json!([1, [2]])));
        assert_eq!(extract("{broken [\"ok\"]"), Some(json!(["ok"])));
        assert_eq!(extract("no json {here"), None);
    }

    #[test]
    fn validate_checks_the_common_keywords() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 5},
                "n": {"type": "integer", "minimum": 1, "maximum": 3},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}
            },
            "required": ["name"],
            "additionalProperties": false
        });
        assert_eq!(
            validate(&json!({"name": "x", "n": 2, "tags": ["a"]}), &schema),
            Ok(())
        );
        let bad = [
            (json!([]), "$: expected object, got array"),
            (json!({}), "missing required property \"name\""),
            (json!({"name": ""}), "$.name: 0 characters, fewer than 1"),
            (json!({"name": "x", "n": 1.5}), "$.n: expected integer"),
            (json!({"name": "x", "n": 4}), "$.n: 4 is out of range"),
            (
                json!({"name": "x", "tags": ["c"]}),
                "$.tags[0]: \"c\" is not one of",
            ),
            (
                json!({"name": "x", "tags": ["a", "a", "b"]}),
                "3 items, more than 2",
            ),
            (
                json!({"name": "x", "other": 1}),
                "unexpected property \"other\"",
            ),
        ];
        for (value, want) in bad {
            let err = validate(&value, &schema).unwrap_err();
            assert!(err.contains(want), "{value}: {err}");
        }
    }

    #[test]
    fn validate_combinators() {
        let s = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
        assert!(validate(&json!(3), &s).is_ok());
        assert!(validate(&json!(true), &s).is_err());
        let s = json!({"oneOf": [{"type": "number"}, {"type": "integer"}]});
        assert!(
            validate(&json!(1), &s).is_err(),
            "1 is both number and integer"
        );
        assert!(validate(&json!(1.5), &s).is_ok());
        assert!(validate(&json!(1), &json!({"const": 1.0})).is_ok());
        assert!(validate(&json!(null), &json!(false)).is_err());
    }
}
