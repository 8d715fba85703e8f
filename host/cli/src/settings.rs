//! Strict parsing of `NRVNA_*` variables: a bad value stops start-up with a message that
//! names the variable and the accepted range (the predecessor read garbage as 0).

use std::fmt::Display;
use std::str::FromStr;

use anyhow::{Result, bail};

/// Reads `name` as a number in `min..=max`; `Ok(None)` when unset or empty.
pub fn env_in<T>(name: &str, min: T, max: T) -> Result<Option<T>>
where
    T: FromStr + PartialOrd + Display + Copy,
{
    let Ok(raw) = std::env::var(name) else {
        return Ok(None);
    };
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    match raw.parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(Some(v)),
        _ => bail!("{name}={raw:?} is invalid: expected a number from {min} to {max}"),
    }
}

/// Reads `name` as a non-empty string (surrounding whitespace trimmed); `Ok(None)` when
/// unset or empty, an error when it is not valid UTF-8.
pub fn env_str(name: &str) -> Result<Option<String>> {
    match std::env::var(name) {
        Ok(raw) => {
            let raw = raw.trim();
            Ok((!raw.is_empty()).then(|| raw.to_owned()))
        }
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(raw)) => {
            bail!("{name}={raw:?} is invalid: expected UTF-8 text")
        }
    }
}

/// Like [`env_in`] with a default.
pub fn env_or<T>(name: &str, default: T, min: T, max: T) -> Result<T>
where
    T: FromStr + PartialOrd + Display + Copy,
{
    Ok(env_in(name, min, max)?.unwrap_or(default))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strictly() {
        // SAFETY: tests in this module use their own variable names.
        unsafe {
            std::env::set_var("NRVNA_TEST_A", "12");
            std::env::set_var("NRVNA_TEST_B", "12oops");
            std::env::set_var("NRVNA_TEST_C", "0");
        }
        assert_eq!(env_in::<u32>("NRVNA_TEST_A", 1, 64).unwrap(), Some(12));
        let err = env_in::<u32>("NRVNA_TEST_B", 1, 64)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("NRVNA_TEST_B") && err.contains("1 to 64"),
            "{err}"
        );
        assert!(env_in::<u32>("NRVNA_TEST_C", 1, 64).is_err());
        assert_eq!(env_or::<u32>("NRVNA_TEST_UNSET", 7, 1, 64).unwrap(), 7);
        // SAFETY: as above.
        unsafe {
            std::env::set_var("NRVNA_TEST_D", "  m.gguf ");
            std::env::set_var("NRVNA_TEST_E", " ");
        }
        assert_eq!(env_str("NRVNA_TEST_D").unwrap().as_deref(), Some("m.gguf"));
        assert_eq!(env_str("NRVNA_TEST_E").unwrap(), None);
        assert_eq!(env_str("NRVNA_TEST_UNSET").unwrap(), None);
    }
}
