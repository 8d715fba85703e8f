//! A component that attacks its host. The first argument picks the attack; each mode
//! returns a report (one line per attempt) for the test to check, unless the host
//! stops it first.

wit_bindgen::generate!({ path: "../../../wit", world: "agent" });

use nrvna::agent::jobs;
use nrvna::agent::types::SubmitOptions;

struct Hostile;

fn options(route: Option<String>) -> SubmitOptions {
    SubmitOptions {
        route,
        images: Vec::new(),
        max_tokens: Some(4),
        temperature: Some(0.0),
        seed: None,
        system: None,
        json_schema: None,
        parent: None,
        tags: vec!["fx-hostile".into()],
        key: None,
    }
}

fn read(path: &str) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => format!("read {path}: OK {} bytes: {}", text.len(), text.trim()),
        Err(e) => format!("read {path}: refused: {e}"),
    }
}

impl Guest for Hostile {
    fn run(args: Vec<String>) -> Result<String, String> {
        let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
        match arg(0).as_str() {
            "spin" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "membomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("the guest panicked on purpose"),
            "read-passwd" => Ok(read("/etc/passwd")),
            "read" => Ok(read(&arg(1))),
            // DIR is a granted guest directory; its parent holds secret.txt.
            "escape-dotdot" => {
                let dir = arg(1);
                Ok([
                    read(&format!("{dir}/../secret.txt")),
                    read(&format!("{dir}/../../../../../../etc/passwd")),
                    read(&format!("{dir}/inside/../../secret.txt")),
                ]
                .join("\n"))
            }
            // DIR/link is a symlink the test planted, pointing outside the grant.
            "escape-symlink" => {
                let dir = arg(1);
                Ok([
                    read(&format!("{dir}/link")),
                    read(&format!("{dir}/linkdir/secret.txt")),
                ]
                .join("\n"))
            }
            "write" => {
                let path = arg(1);
                match std::fs::write(&path, arg(2)) {
                    Ok(()) => Ok(format!("wrote {path}")),
                    Err(e) => Err(format!("write {path}: refused: {e}")),
                }
            }
            "env" => {
                let mut vars: Vec<String> =
                    std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                vars.sort();
                Ok(vars.join("\n"))
            }
            "bad-ids" => {
                let long = "9".repeat(200);
                let ids = [
                    "../etc/passwd",
                    "/etc/passwd",
                    "1\0",
                    "1\0/../../etc",
                    "..",
                    "",
                    "1/2",
                    long.as_str(),
                    "1__2",
                ];
                let mut lines = Vec::new();
                for id in ids {
                    lines.push(format!("follow {id:?}: {:?}", jobs::follow(id, Some(10))));
                    lines.push(format!("status {id:?}: {:?}", jobs::status(id)));
                    lines.push(format!("cancel {id:?}: {:?}", jobs::cancel(id)));
                }
                let list: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
                lines.push(format!("wait-any: {:?}", jobs::wait_any(&list, Some(10))));
                for r in jobs::wait_all(&list, Some(10)) {
                    lines.push(format!("wait-all: {r:?}"));
                }
                Ok(lines.join("\n"))
            }
            "flood" => {
                let n: u64 = arg(1).parse().unwrap_or(100_000);
                let (mut ok, mut quota, mut other) = (0u64, 0u64, 0u64);
                let mut first_quota = String::new();
                for i in 0..n {
                    match jobs::submit(&format!("flood {i}"), &options(None)) {
                        Ok(_) => ok += 1,
                        Err(nrvna::agent::types::JobError::Quota(msg)) => {
                            if first_quota.is_empty() {
                                first_quota = msg;
                            }
                            quota += 1;
                        }
                        Err(_) => other += 1,
                    }
                }
                Ok(format!(
                    "submitted {ok} quota {quota} other {other}\nfirst quota error: {first_quota}"
                ))
            }
            "route" => {
                let name = arg(1);
                let submitted = jobs::submit("hello", &options(Some(name.clone())));
                Ok(format!(
                    "routes {:?}\nsubmit via {name}: {submitted:?}",
                    jobs::routes()
                ))
            }
            "huge-prompt" => {
                let bytes: usize = arg(1).parse().map_err(|e| format!("BYTES: {e}"))?;
                let prompt = "a".repeat(bytes);
                let r = jobs::submit(&prompt, &options(None));
                Ok(format!(
                    "submit of {bytes} bytes: {:?}",
                    r.map_err(|e| {
                        let text = format!("{e:?}");
                        text.chars().take(300).collect::<String>()
                    })
                ))
            }
            // Blocks in `follow` on a job no daemon will run.
            "stuck-follow" => {
                let id = jobs::submit("never served", &options(None))
                    .map_err(|e| format!("submit: {e:?}"))?;
                jobs::follow(&id, None)
                    .map(|o| o.text)
                    .map_err(|e| format!("follow: {e:?}"))
            }
            // Blocks in `follow` on a job queued in route NAME, which no daemon serves.
            "stuck-route" => {
                let id = jobs::submit("never served", &options(Some(arg(1))))
                    .map_err(|e| format!("submit: {e:?}"))?;
                jobs::follow(&id, None)
                    .map(|o| o.text)
                    .map_err(|e| format!("follow: {e:?}"))
            }
            other => Err(format!("unknown mode {other:?}")),
        }
    }
}

export!(Hostile);
