//! Nesting through `agents.call`. Modes:
//! - `N` (a number): calls itself with N-1 until 0; returns `nest(N)>...>nest(0)`;
//! - `forever`: calls itself with `forever` and returns what the call gave, so the
//!   depth-limit error surfaces from the deepest call;
//! - `call NAME ARGS...`: calls the agent NAME and returns its result.

wit_bindgen::generate!({ path: "../../../wit", world: "agent" });

use nrvna::agent::agents;

struct Nest;

impl Guest for Nest {
    fn run(args: Vec<String>) -> Result<String, String> {
        match args.first().map(String::as_str) {
            Some("forever") => {
                agents::call("self", &["forever".to_string()]).map_err(|e| format!("{e:?}"))
            }
            Some("call") => {
                let name = args.get(1).ok_or("usage: call NAME ARGS...")?;
                agents::call(name, &args[2..]).map_err(|e| format!("{e:?}"))
            }
            Some(n) => {
                let n: u32 = n.parse().map_err(|e| format!("depth: {e}"))?;
                if n == 0 {
                    return Ok("nest(0)".into());
                }
                let inner = agents::call("self", &[(n - 1).to_string()])
                    .map_err(|e| format!("nest({n}): {e:?}"))?;
                Ok(format!("nest({n})>{inner}"))
            }
            None => Err("usage: nest N | forever | call NAME ARGS...".into()),
        }
    }
}

export!(Nest);
