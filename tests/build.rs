//! Builds the WebAssembly guests the tests run (as wasmtime's test-programs do): the
//! fixture guests in `tests/guests/` and the SDK's pattern components in `guests/`.
//! Each is its own cargo workspace targeting wasm32-wasip2; the `.wasm` files land in
//! `<target>/wasm-guests/wasm32-wasip2/release/`, exported to the tests as
//! `NRVNA_GUESTS_DIR`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("tests/ has a parent")
        .to_owned();
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out: the guests get a sibling
    // target dir of their own, so the nested cargo never waits on our build lock.
    let out_dir = PathBuf::from(env("OUT_DIR"));
    let target = out_dir
        .ancestors()
        .nth(4)
        .map(Path::to_owned)
        .unwrap_or_else(|| root.join("target"));
    let guest_target = target.join("wasm-guests");
    for rel in ["tests/guests", "guests"] {
        let dir = root.join(rel);
        println!("cargo:rerun-if-changed={}", dir.display());
        if !dir.join("Cargo.toml").is_file() {
            continue;
        }
        build(&dir, &guest_target);
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!(
        "cargo:rustc-env=NRVNA_GUESTS_DIR={}",
        guest_target.join("wasm32-wasip2/release").display()
    );
}

fn build(workspace: &Path, target_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--workspace",
        ])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        // Flags meant for the host build must not leak into the guest build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_MAKEFLAGS")
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo for {}: {e}", workspace.display()));
    assert!(
        status.success(),
        "building the guests in {} failed (is the wasm32-wasip2 target installed? scripts/setup adds it)",
        workspace.display()
    );
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}
