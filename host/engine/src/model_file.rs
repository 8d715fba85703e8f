//! Checks on a model path before anything expensive happens.

use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("model file {0} does not exist")]
    Missing(PathBuf),
    #[error("model {0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("cannot read model {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a GGUF model (its first bytes are not \"GGUF\")")]
    NotGguf(PathBuf),
}

/// Verifies that `path` is a readable GGUF file (by its magic number).
pub fn check_model_file(path: &Path) -> Result<(), ModelFileError> {
    let md = match std::fs::metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ModelFileError::Missing(path.to_owned()));
        }
        Err(source) => {
            return Err(ModelFileError::Unreadable {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !md.is_file() {
        return Err(ModelFileError::NotAFile(path.to_owned()));
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|source| ModelFileError::Unreadable {
            path: path.to_owned(),
            source,
        })
        .and_then(|()| {
            if &magic == b"GGUF" {
                Ok(())
            } else {
                Err(ModelFileError::NotGguf(path.to_owned()))
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_missing_and_non_gguf() {
        let dir = std::env::temp_dir().join(format!("nrvna-mf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(
            check_model_file(&dir.join("nope.gguf")),
            Err(ModelFileError::Missing(_))
        ));
        let junk = dir.join("junk.gguf");
        std::fs::write(&junk, b"not a model").unwrap();
        assert!(matches!(
            check_model_file(&junk),
            Err(ModelFileError::NotGguf(_))
        ));
        let short = dir.join("short.gguf");
        std::fs::write(&short, b"GG").unwrap();
        assert!(matches!(
            check_model_file(&short),
            Err(ModelFileError::Unreadable { .. })
        ));
        let good = dir.join("ok.gguf");
        std::fs::write(&good, b"GGUF\x03\0\0\0").unwrap();
        assert!(check_model_file(&good).is_ok());
        assert!(matches!(
            check_model_file(&dir),
            Err(ModelFileError::NotAFile(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
