//! Per-agent storage. Modes:
//! - `count`: increments `runs/count` and returns the new value;
//! - `bad-keys`: tries keys and values the host must refuse, one line per attempt;
//! - `list PREFIX`: the keys starting with PREFIX, one per line;
//! - `delete KEY`: deletes KEY, then reads it back.

wit_bindgen::generate!({ path: "../../../wit", world: "agent" });

use nrvna::agent::kv;

struct Kv;

impl Guest for Kv {
    fn run(args: Vec<String>) -> Result<String, String> {
        match args.first().map(String::as_str) {
            Some("count") => {
                let current = match kv::get("runs/count").map_err(|e| format!("get: {e:?}"))? {
                    Some(bytes) => String::from_utf8(bytes)
                        .map_err(|_| "stored count is not UTF-8".to_string())?
                        .parse::<u64>()
                        .map_err(|e| format!("stored count: {e}"))?,
                    None => 0,
                };
                let next = current + 1;
                kv::set("runs/count", next.to_string().as_bytes())
                    .map_err(|e| format!("set: {e:?}"))?;
                Ok(next.to_string())
            }
            Some("bad-keys") => {
                let long = "k".repeat(129);
                let mut lines = Vec::new();
                for key in [
                    "",
                    "../escape",
                    "a/../../b",
                    "/abs",
                    "nul\0byte",
                    "sp ace",
                    &long,
                ] {
                    let r = kv::set(key, b"x");
                    lines.push(format!("set {:?}: {r:?}", key));
                }
                lines.push(format!("get ../x: {:?}", kv::get("../x")));
                let big = vec![0u8; (1 << 20) + 1];
                lines.push(format!(
                    "set big: {:?}",
                    kv::set("big", &big).map_err(short)
                ));
                Ok(lines.join("\n"))
            }
            Some("list") => {
                let prefix = args.get(1).map(String::as_str).unwrap_or("");
                let keys = kv::list_keys(prefix).map_err(|e| format!("list: {e:?}"))?;
                Ok(keys.join("\n"))
            }
            Some("delete") => {
                let key = args.get(1).ok_or("usage: delete KEY")?;
                kv::delete(key).map_err(|e| format!("delete: {e:?}"))?;
                Ok(format!("{:?}", kv::get(key)))
            }
            _ => Err("usage: kv count | bad-keys | list PREFIX | delete KEY".into()),
        }
    }
}

fn short(e: nrvna::agent::types::JobError) -> String {
    let text = format!("{e:?}");
    text.chars().take(200).collect()
}

export!(Kv);
