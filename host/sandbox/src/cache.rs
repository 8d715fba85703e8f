//! On-disk cache of compiled components.
//!
//! An artifact is named by the sha256 of the component bytes and a digest of
//! `Engine::precompile_compatibility_hash`, so a different wasmtime or engine
//! configuration never picks up a stale artifact; anything that still fails to
//! deserialize is recompiled and overwritten.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

pub(crate) struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

/// Feeds `Hash` output into sha256, so the key is stable across processes (the std
/// hasher is randomly keyed).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        0
    }
}

impl CompileCache {
    /// Opens (creating, private to this user) the cache directory.
    pub(crate) fn open(dir: &Path, engine: &Engine) -> std::io::Result<CompileCache> {
        fs::create_dir_all(dir)?;
        {
            use std::os::unix::fs::PermissionsExt;
            // Artifacts are native code loaded without verification: nobody else may write here.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex(&hasher.0.finalize())[..16].to_owned();
        Ok(CompileCache {
            dir: dir.to_owned(),
            engine_key,
        })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// The cached artifact for `digest`, if there is a usable one.
    pub(crate) fn load(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.path(digest);
        if !path.is_file() {
            return None;
        }
        // SAFETY: the file was written by `store`/`store_artifact` below from a compile
        // by this same program (in process, or in its own compile child) and wasmtime (its name carries the engine's compatibility
        // hash), in a directory only this user can write; wasmtime still checks its
        // header and version and refuses a mismatch, which we treat as a miss.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(
                    "compiled-component cache {}: unusable ({e}); recompiling",
                    path.display()
                );
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Writes a compiled component's artifact.
    pub(crate) fn store(&self, digest: &str, component: &Component) {
        match component.serialize() {
            Ok(bytes) => self.store_artifact(digest, &bytes),
            Err(e) => tracing::warn!("cannot serialize a compiled component for the cache: {e}"),
        }
    }

    /// Writes an artifact this process compiled, or had its own compile child compile
    /// (temp file + rename, so readers never see half of one).
    pub(crate) fn store_artifact(&self, digest: &str, bytes: &[u8]) {
        let path = self.path(digest);
        let tmp = self
            .dir
            .join(format!(".{digest}.{}.tmp", std::process::id()));
        let result = fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
            .and_then(|()| fs::rename(&tmp, &path));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        if let Err(e) = result {
            tracing::warn!(
                "cannot write compiled-component cache {}: {e}",
                path.display()
            );
        }
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}
