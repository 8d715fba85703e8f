//! Host-call overhead for the bench-sandbox example: `KIND N` calls one import N times
//! (`log`, `status`, `routes`, `kv-get`) and returns how many calls succeeded.

wit_bindgen::generate!({ path: "../../../wit", world: "agent" });

use nrvna::agent::log::{Level, log};
use nrvna::agent::{jobs, kv};

struct Hostcalls;

impl Guest for Hostcalls {
    fn run(args: Vec<String>) -> Result<String, String> {
        let kind = args.first().ok_or("usage: hostcalls KIND N")?;
        let n: u64 = args
            .get(1)
            .ok_or("usage: hostcalls KIND N")?
            .parse()
            .map_err(|e| format!("N: {e}"))?;
        let mut ok = 0u64;
        for i in 0..n {
            let fine = match kind.as_str() {
                "log" => {
                    log(Level::Debug, "tick");
                    true
                }
                // A well-formed id no job has: the full lookup path, no job needed.
                "status" => jobs::status(&format!("1_{i}")).is_ok(),
                "routes" => {
                    std::hint::black_box(jobs::routes());
                    true
                }
                "kv-get" => kv::get("bench").is_ok(),
                other => return Err(format!("unknown kind {other:?}")),
            };
            ok += u64::from(fine);
        }
        Ok(ok.to_string())
    }
}

export!(Hostcalls);
