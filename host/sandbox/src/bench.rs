//! Measurements for `nrvna bench --only sandbox`: what the hardening's checks cost next to
//! the work they guard, on friendly inputs. Each pair is measured in turn, round after
//! round, keeping each side's fastest round, so a noisy moment skews neither side.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::compile::{compile_child_program, compile_in_child, engine_config};
use crate::kv::Kv;
use crate::limits::measure_cpu;
use crate::runtime::check_compile_cost;

/// The fastest of several rounds of a check and of the work it guards (or of the work
/// without and with the check).
#[derive(Debug, Clone, Copy)]
pub struct Pair {
    pub first: Duration,
    pub second: Duration,
}

impl Pair {
    /// `second` ÷ `first`.
    pub fn ratio(&self) -> f64 {
        self.second.as_secs_f64() / self.first.as_secs_f64().max(1e-12)
    }
}

/// Runs `a` and `b` in turn `rounds` times; the fastest of each.
pub fn interleaved(
    rounds: u32,
    mut a: impl FnMut() -> Result<(), String>,
    mut b: impl FnMut() -> Result<(), String>,
) -> Result<Pair, String> {
    let mut best = Pair {
        first: Duration::MAX,
        second: Duration::MAX,
    };
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        a()?;
        best.first = best.first.min(t.elapsed());
        let t = Instant::now();
        b()?;
        best.second = best.second.min(t.elapsed());
    }
    Ok(best)
}

/// The compile-cost check of a component (`first`) and compiling it (`second`, a
/// fresh engine each round, no cache).
pub fn compile_check(bytes: &[u8], rounds: u32) -> Result<Pair, String> {
    let engine = wasmtime::Engine::new(wasmtime::Config::new().wasm_component_model(true))
        .map_err(|e| e.to_string())?;
    interleaved(
        rounds,
        || check_compile_cost(bytes),
        || {
            wasmtime::component::Component::new(&engine, bytes)
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
}

/// Compiling a component in this process (`first`) and in a compile child that could
/// be killed at a deadline (`second`: starting the child, compiling, sending the
/// artifact back, loading it), each round from scratch. `None` if this program serves
/// no compiles (see [`crate::serve_compile_child`]).
pub fn compile_in_child_process(bytes: &[u8], rounds: u32) -> Option<Result<Pair, String>> {
    let program = compile_child_program()?;
    let engine = match wasmtime::Engine::new(&engine_config()) {
        Ok(engine) => engine,
        Err(e) => return Some(Err(e.to_string())),
    };
    Some(interleaved(
        rounds,
        || {
            wasmtime::component::Component::new(&engine, bytes)
                .map(drop)
                .map_err(|e| e.to_string())
        },
        || {
            let artifact = compile_in_child(&program, "bench", bytes, Duration::from_secs(600))
                .map_err(|e| format!("{e:?}"))?;
            // SAFETY: the artifact comes from this program's own compile child, as in
            // `Runtime::load`.
            unsafe { wasmtime::component::Component::deserialize(&engine, &artifact) }
                .map(drop)
                .map_err(|e| e.to_string())
        },
    ))
}

/// `kv.get` of a 1 KiB value as a plain call (`first`) and with the thread-CPU
/// measurement that charges host work to `--cpu` around it (`second`).
pub fn host_cpu_charge(ws: &Path, rounds: u32) -> Result<Pair, String> {
    let kv = Kv::new(ws.to_owned(), "bench".into());
    let err = |e: crate::bindings::nrvna::agent::types::JobError| format!("{e:?}");
    kv.set("probe", &[7u8; 1024]).map_err(err)?;
    interleaved(
        rounds,
        || kv.get("probe").map(drop).map_err(err),
        || measure_cpu(|| kv.get("probe")).0.map(drop).map_err(err),
    )
}

/// `kv.set` of a 1 KiB value in a store of `keys` keys under `ws`: without the per-agent
/// byte budget (`first`) and with it (`second`: the keys' sizes are counted on the first
/// set and kept up to date after). Two agents' stores of the same size, so the plain
/// side's writes do not change the store the budgeted side counts.
pub fn kv_set(ws: &Path, keys: usize, rounds: u32) -> Result<Pair, String> {
    let plain = Kv::new(ws.to_owned(), "bench-plain".into());
    let budgeted = Kv::new(ws.to_owned(), "bench-budgeted".into()).with_byte_limit(u64::MAX / 2);
    let err = |e: crate::bindings::nrvna::agent::types::JobError| format!("{e:?}");
    for i in 0..keys {
        plain.set(&format!("k{i}"), b"x").map_err(err)?;
        budgeted.set(&format!("k{i}"), b"x").map_err(err)?;
    }
    let value = vec![7u8; 1024];
    interleaved(
        rounds,
        || plain.set("probe", &value).map_err(err),
        || budgeted.set("probe", &value).map_err(err),
    )
}
