//! `scripts/setup` decides what to install by Debian package name. These runs put stubs of
//! `dpkg-query`, `rustup` and `apt-get` first on PATH, so the script sees a machine the
//! test describes, and nothing is installed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Every Debian package the script checks; which of them the fake machine lacks is each
/// test's to say.
const PACKAGES: [&str; 7] = [
    "cmake",
    "g++",
    "make",
    "libclang-dev",
    "python3",
    "python3-pip",
    "python3-venv",
];

struct FakeMachine {
    dir: tempfile::TempDir,
}

impl FakeMachine {
    /// A machine where the packages in `missing` are not installed (all others are), the
    /// wasm target is installed, and `models` says whether both models are cached.
    fn new(missing: &[&str], models: bool) -> FakeMachine {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        // dpkg-query -W -f '${Status}' PKG, as dpkg answers for an installed package and
        // for one it does not know.
        let missing = missing.join(" ");
        stub(
            &bin,
            "dpkg-query",
            &format!(
                "pkg=\"${{@: -1}}\"\n\
                 echo \"$*\" >> \"{log}\"\n\
                 for m in {missing}; do\n\
                   if [ \"$m\" = \"$pkg\" ]; then\n\
                     echo \"dpkg-query: no packages found matching $pkg\" >&2; exit 1\n\
                   fi\n\
                 done\n\
                 printf 'install ok installed'\n",
                log = dir.path().join("dpkg.log").display()
            ),
        );
        stub(
            &bin,
            "rustup",
            "echo wasm32-wasip2\necho x86_64-unknown-linux-gnu\n",
        );
        // Anything that would install must not run.
        for tool in ["apt-get", "sudo", "pip"] {
            stub(
                &bin,
                tool,
                &format!("echo \"{tool} was called: $*\" >&2\nexit 99\n"),
            );
        }
        // The openai client's venv: present on a complete machine, absent otherwise.
        let venv_bin = dir.path().join("venv-openai/bin");
        if models {
            fs::create_dir_all(&venv_bin).unwrap();
            stub(&venv_bin, "python", "exit 0\n");
        }
        let models_dir = dir.path().join("models");
        fs::create_dir(&models_dir).unwrap();
        if models {
            for name in [nrvna_tests::DEFAULT_MODEL, nrvna_tests::EMBED_MODEL] {
                fs::write(models_dir.join(name), b"GGUF").unwrap();
            }
        }
        FakeMachine { dir }
    }

    fn setup(&self, args: &[&str]) -> Output {
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new(script())
            .args(args)
            .env("PATH", path)
            .env("NRVNA_MODELS_DIR", self.dir.path().join("models"))
            .env("NRVNA_OPENAI_VENV", self.dir.path().join("venv-openai"))
            .output()
            .unwrap()
    }

    fn dpkg_queries(&self) -> String {
        fs::read_to_string(self.dir.path().join("dpkg.log")).unwrap_or_default()
    }
}

fn stub(bin: &Path, name: &str, body: &str) {
    let path = bin.join(name);
    fs::write(&path, format!("#!/usr/bin/env bash\n{body}")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("scripts/setup")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn check_lists_libclang_dev_when_only_libclang_cpp_is_there() {
    // The Rust image ships libclang-cpp14 (libclang-cpp.so) but not libclang-dev: the
    // old file glob took one for the other.
    let machine = FakeMachine::new(&["libclang-dev", "cmake"], true);
    let out = machine.setup(&["--check"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("would install Debian packages: cmake libclang-dev"),
        "{said}"
    );
    assert!(!said.contains("was called"), "{said}");
    // Every package was asked for by name.
    let queries = machine.dpkg_queries();
    for pkg in PACKAGES {
        assert!(
            queries.lines().any(|l| l.ends_with(&format!(" {pkg}"))),
            "{pkg} not queried: {queries}"
        );
    }
}

#[test]
fn check_lists_missing_models_too() {
    let machine = FakeMachine::new(&[], false);
    let out = machine.setup(&["--check"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(!said.contains("Debian packages"), "{said}");
    assert!(
        said.contains("would download the default model")
            && said.contains("would build the embedding model")
            && said.contains("would create the openai client venv"),
        "{said}"
    );
}

#[test]
fn a_complete_machine_installs_nothing_and_says_so() {
    let machine = FakeMachine::new(&[], true);
    let out = machine.setup(&["--check"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("nothing to install"), "{said}");

    let out = machine.setup(&[]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("Debian packages: all present"), "{said}");
    assert!(!said.contains("was called"), "{said}");
}

#[test]
fn an_unknown_argument_is_refused() {
    let machine = FakeMachine::new(&[], true);
    let out = machine.setup(&["--chekc"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--chekc"));
}
