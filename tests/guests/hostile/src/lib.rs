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
            // Opens DIR/held N times and keeps the files open for HOLD_MS, then does the
            // same in a nested call of itself, DEPTH more times: the run tree's handles.
            "hold-files" => {
                let dir = arg(1);
                let n: usize = arg(2).parse().map_err(|e| format!("N: {e}"))?;
                let depth: u32 = arg(3).parse().map_err(|e| format!("DEPTH: {e}"))?;
                let hold_ms: u64 = arg(4).parse().unwrap_or(0);
                let path = format!("{dir}/held");
                std::fs::write(&path, "x").map_err(|e| format!("create {path}: {e}"))?;
                let mut held = Vec::with_capacity(n);
                let mut refused = String::new();
                for i in 0..n {
                    match std::fs::File::open(&path) {
                        Ok(f) => held.push(f),
                        Err(e) => {
                            refused = format!(" (open #{i} refused: {e})");
                            break;
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(hold_ms));
                let mut report = format!("depth {depth}: held {}{refused}", held.len());
                if depth > 0 {
                    let args = [
                        "hold-files".to_string(),
                        dir,
                        n.to_string(),
                        (depth - 1).to_string(),
                        hold_ms.to_string(),
                    ];
                    match nrvna::agent::agents::call("self", &args) {
                        Ok(inner) => report = format!("{report}\n{inner}"),
                        Err(e) => report = format!("{report}\nnested: {e:?}"),
                    }
                }
                Ok(report)
            }
            // Calls itself with ARGS and swallows whatever stops the call.
            "swallow" => {
                let rest: Vec<String> = args[1..].to_vec();
                match nrvna::agent::agents::call("self", &rest) {
                    Ok(text) => Ok(format!("nested returned: {text}")),
                    Err(e) => Ok(format!("swallowed: {e:?}")),
                }
            }
            // Calls the granted agent NAME (ARGS after it) and reports what came back.
            "call-agent" => {
                let rest: Vec<String> = args[2..].to_vec();
                match nrvna::agent::agents::call(&arg(1), &rest) {
                    Ok(text) => Ok(format!("call returned: {text}")),
                    Err(e) => Ok(format!("call failed: {e:?}")),
                }
            }
            // N `status` calls on ID, then N `wait-all`s of COPIES copies of it, then N
            // log lines: cheap calls each, host work each.
            "host-calls" => {
                let id = arg(1);
                let n: usize = arg(2).parse().map_err(|e| format!("N: {e}"))?;
                let copies: usize = arg(3).parse().map_err(|e| format!("COPIES: {e}"))?;
                for _ in 0..n {
                    let _ = jobs::status(&id);
                }
                let ids = vec![id; copies];
                for _ in 0..n {
                    let _ = jobs::wait_all(&ids, Some(0));
                }
                Ok(format!("made {n} of each"))
            }
            // N log lines of TEXT (empty by default) through the log interface.
            "log-flood" => {
                let n: u64 = arg(1).parse().map_err(|e| format!("N: {e}"))?;
                let text = arg(2);
                for _ in 0..n {
                    nrvna::agent::log::log(nrvna::agent::log::Level::Info, &text);
                }
                Ok(format!("logged {n}"))
            }
            // Stores N values of BYTES bytes under keys fill/0.. until the host refuses.
            "kv-fill" => {
                let n: u64 = arg(1).parse().map_err(|e| format!("N: {e}"))?;
                let bytes: usize = arg(2).parse().map_err(|e| format!("BYTES: {e}"))?;
                let value = vec![7u8; bytes];
                for i in 0..n {
                    if let Err(e) = nrvna::agent::kv::set(&format!("fill/{i}"), &value) {
                        return Ok(format!("stored {i}\nrefused: {e:?}"));
                    }
                }
                Ok(format!("stored {n}"))
            }
            // Submits N jobs, each naming the image PATH COUNT times, until refused.
            "images" => {
                let n: u64 = arg(1).parse().map_err(|e| format!("N: {e}"))?;
                let count: usize = arg(2).parse().map_err(|e| format!("COUNT: {e}"))?;
                let mut opts = options(None);
                opts.images = vec![arg(3); count];
                for i in 0..n {
                    if let Err(e) = jobs::submit("describe", &opts) {
                        return Ok(format!("submitted {i}\nrefused: {e:?}"));
                    }
                }
                Ok(format!("submitted {n}"))
            }
            // Submits a job whose JSON Schema has N optional string properties.
            "schema" => {
                let n: usize = arg(1).parse().map_err(|e| format!("N: {e}"))?;
                let props: Vec<String> = (0..n)
                    .map(|i| format!(r#""p{i}":{{"type":"string"}}"#))
                    .collect();
                let mut opts = options(None);
                opts.json_schema = Some(format!(
                    r#"{{"type":"object","properties":{{{}}}}}"#,
                    props.join(",")
                ));
                Ok(format!("submit: {:?}", jobs::submit("fill it", &opts)))
            }
            // Submits N jobs (cancelling each), each with a schema of OBJECTS nested
            // objects of PROPS properties: host work (conversion) for a cheap call. Logs
            // each submit, so the test can count how many the run got to make.
            "schema-hammer" => {
                let n: usize = arg(1).parse().map_err(|e| format!("N: {e}"))?;
                let props: usize = arg(2).parse().map_err(|e| format!("PROPS: {e}"))?;
                let objects: usize = arg(3).parse().map_err(|e| format!("OBJECTS: {e}"))?;
                let leaf: Vec<String> = (0..props)
                    .map(|i| format!(r#""p{i}":{{"type":"string"}}"#))
                    .collect();
                let leaf = format!(r#"{{"type":"object","properties":{{{}}}}}"#, leaf.join(","));
                let outer: Vec<String> = (0..objects).map(|i| format!(r#""o{i}":{leaf}"#)).collect();
                let mut opts = options(None);
                opts.json_schema = Some(format!(
                    r#"{{"type":"object","properties":{{{}}}}}"#,
                    outer.join(",")
                ));
                for i in 0..n {
                    let id = jobs::submit("fill it", &opts).map_err(|e| format!("submit {i}: {e:?}"))?;
                    let _ = jobs::cancel(&id);
                    nrvna::agent::log::log(nrvna::agent::log::Level::Info, &format!("hammer {i}"));
                }
                Ok(format!("submitted {n}"))
            }
            // Waits for N copies of the job ID at once; counts what comes back.
            "wait-all-copies" => {
                let n: usize = arg(2).parse().map_err(|e| format!("N: {e}"))?;
                let ids = vec![arg(1); n];
                let (mut ok, mut bytes, mut quota) = (0usize, 0usize, 0usize);
                let mut first_quota = String::new();
                for r in jobs::wait_all(&ids, Some(1000)) {
                    match r {
                        Ok(out) => {
                            ok += 1;
                            bytes += out.text.len();
                        }
                        Err(nrvna::agent::types::JobError::Quota(m)) => {
                            quota += 1;
                            if first_quota.is_empty() {
                                first_quota = m;
                            }
                        }
                        Err(e) => return Err(format!("{e:?}")),
                    }
                }
                Ok(format!("ok {ok} bytes {bytes} quota {quota}\n{first_quota}"))
            }
            // N `status` calls and one `kv.get` with an id/key of BYTES control characters,
            // then HOLD_MS (0 by default) of waiting, for the test to read the host's
            // peak memory.
            "huge-ids" => {
                let n: usize = arg(1).parse().map_err(|e| format!("N: {e}"))?;
                let bytes: usize = arg(2).parse().map_err(|e| format!("BYTES: {e}"))?;
                let junk = "\u{1b}".repeat(bytes);
                let mut longest = 0;
                for _ in 0..n {
                    let r = format!("{:?}", jobs::status(&junk));
                    longest = longest.max(r.len());
                }
                let kv = format!("{:?}", nrvna::agent::kv::get(&junk));
                longest = longest.max(kv.len());
                let hold_ms: u64 = arg(3).parse().unwrap_or(0);
                std::thread::sleep(std::time::Duration::from_millis(hold_ms));
                Ok(format!("longest error {longest} bytes"))
            }
            // Appends N MiB to PATH, 1 MiB a write, until the host refuses.
            "write-flood" => {
                use std::io::Write;
                let path = arg(1);
                let n: usize = arg(2).parse().map_err(|e| format!("N: {e}"))?;
                let mut f = std::fs::File::create(&path).map_err(|e| format!("{path}: {e}"))?;
                let chunk = vec![b'x'; 1 << 20];
                for i in 0..n {
                    if let Err(e) = f.write_all(&chunk) {
                        return Ok(format!("wrote {i} MiB\nrefused: {e}"));
                    }
                }
                Ok(format!("wrote {n} MiB"))
            }
            // Writes N MiB to PATH with positioned writes (`pwrite`, WASI's
            // `descriptor.write`, no stream), 1 MiB at each offset, until refused.
            "pwrite-flood" => {
                use std::os::fd::AsRawFd;
                unsafe extern "C" {
                    fn pwrite(fd: i32, buf: *const u8, len: usize, offset: i64) -> isize;
                }
                let path = arg(1);
                let n: usize = arg(2).parse().map_err(|e| format!("N: {e}"))?;
                let f = std::fs::File::create(&path).map_err(|e| format!("{path}: {e}"))?;
                let chunk = vec![b'x'; 1 << 20];
                for i in 0..n {
                    // SAFETY: `chunk` outlives the call and `len` is its length.
                    let wrote = unsafe {
                        pwrite(
                            f.as_raw_fd(),
                            chunk.as_ptr(),
                            chunk.len(),
                            (i as i64) << 20,
                        )
                    };
                    if wrote != chunk.len() as isize {
                        let e = std::io::Error::last_os_error();
                        return Ok(format!("wrote {i} MiB\nrefused: {e}"));
                    }
                }
                Ok(format!("wrote {n} MiB"))
            }
            other => Err(format!("unknown mode {other:?}")),
        }
    }
}

export!(Hostile);
