//! What a run may touch (grants) and how much it may use (limits). Everything not
//! granted is denied: no files, no network, no environment, no other workspace.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::error::GrantError;
use crate::limits::Limits;
use crate::text::quoted;

/// `--dir HOST[:GUEST][:ro]`: a host directory the component sees at `GUEST`
/// (default: the HOST text as given), read-write unless `:ro`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// Canonical host path (symlinks resolved when the grant was parsed).
    pub host: PathBuf,
    /// Where the component sees it.
    pub guest: String,
    pub read_only: bool,
}

impl FromStr for DirGrant {
    type Err = GrantError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| GrantError::Dir {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        if spec.contains('\0') {
            return Err(bad("contains a NUL byte"));
        }
        let mut parts: Vec<&str> = spec.split(':').collect();
        let mut read_only = false;
        if parts.len() > 1
            && let Some(mode) = parts.last().copied()
            && (mode == "ro" || mode == "rw")
        {
            read_only = mode == "ro";
            parts.pop();
        }
        let (host, guest) = match parts.as_slice() {
            [host] => (*host, *host),
            [host, guest] => (*host, *guest),
            _ => return Err(bad("expected HOST[:GUEST][:ro]")),
        };
        if host.is_empty() {
            return Err(bad("the host directory is empty"));
        }
        let guest = guest.trim_end_matches('/');
        let guest = if guest.is_empty() { "/" } else { guest };
        if Path::new(guest)
            .components()
            .any(|c| c == Component::ParentDir)
        {
            return Err(bad("the guest path may not contain `..`"));
        }
        let host = std::fs::canonicalize(host)
            .map_err(|e| bad(&format!("cannot open the host directory: {e}")))?;
        if !host.is_dir() {
            return Err(bad("the host path is not a directory"));
        }
        Ok(DirGrant {
            host,
            guest: guest.to_owned(),
            read_only,
        })
    }
}

/// `--env K=V`: one environment variable the component can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    pub key: String,
    pub value: String,
}

impl FromStr for EnvVar {
    type Err = GrantError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        match spec.split_once('=') {
            Some((key, value)) if !key.is_empty() && !spec.contains('\0') => Ok(EnvVar {
                key: key.to_owned(),
                value: value.to_owned(),
            }),
            _ => Err(GrantError::Env {
                spec: spec.to_owned(),
            }),
        }
    }
}

/// `--route NAME=WS`: another workspace the component may submit to by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteGrant {
    pub name: String,
    pub workspace: PathBuf,
}

impl FromStr for RouteGrant {
    type Err = GrantError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| GrantError::Route {
            spec: spec.to_owned(),
            reason,
        };
        let (name, ws) =
            split_named(spec, "NAME=WS", "means the component's own workspace").map_err(bad)?;
        if ws.is_empty() || ws.contains('\0') {
            return Err(bad("the workspace path is empty or contains NUL".into()));
        }
        Ok(RouteGrant {
            name: name.to_owned(),
            workspace: PathBuf::from(ws),
        })
    }
}

/// `--agent NAME=PATH`: a component the run may call with `agents.call(NAME, ..)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentGrant {
    pub name: String,
    pub path: PathBuf,
}

impl FromStr for AgentGrant {
    type Err = GrantError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| GrantError::Agent {
            spec: spec.to_owned(),
            reason,
        };
        let (name, path) =
            split_named(spec, "NAME=PATH", "always means the calling component").map_err(bad)?;
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(bad(format!("{} is not a file", path.display())));
        }
        Ok(AgentGrant {
            name: name.to_owned(),
            path,
        })
    }
}

/// Splits a `NAME=VALUE` grant, checking the name; `self` is refused because it already
/// has a meaning (`self_means`).
fn split_named<'a>(
    spec: &'a str,
    form: &str,
    self_means: &str,
) -> Result<(&'a str, &'a str), String> {
    let (name, value) = spec
        .split_once('=')
        .ok_or_else(|| format!("expected {form}"))?;
    check_name(name)?;
    if name == "self" {
        return Err(format!("`self` {self_means}; pick another name"));
    }
    Ok((name, value))
}

/// Route, agent and agent-storage names: 1-64 characters from `A-Z a-z 0-9 _ - .`,
/// not starting with `.` (they become directory names).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name {} must be 1-64 characters from A-Z a-z 0-9 _ - . and not start with `.`",
            quoted(name, 80)
        ))
    }
}

/// Everything a run is granted. `Grants::default()` grants nothing and uses the default
/// limits.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub dirs: Vec<DirGrant>,
    pub env: Vec<EnvVar>,
    /// Route name → workspace directory.
    pub routes: BTreeMap<String, PathBuf>,
    /// Agent name → component file.
    pub agents: BTreeMap<String, PathBuf>,
    /// `--approve submits`: every job the run submits is held (`input/held/`) until a
    /// person approves it (`nrvna approve`); a denied one is a `denied` error.
    pub approve_submits: bool,
    pub limits: Limits,
}

impl Grants {
    /// Adds a route; a name granted twice is an error.
    pub fn add_route(&mut self, route: RouteGrant) -> Result<(), GrantError> {
        if self.routes.contains_key(&route.name) {
            return Err(GrantError::Route {
                spec: format!("{}={}", route.name, route.workspace.display()),
                reason: "this route name is granted twice".into(),
            });
        }
        self.routes.insert(route.name, route.workspace);
        Ok(())
    }

    /// Adds an agent; a name granted twice is an error.
    pub fn add_agent(&mut self, agent: AgentGrant) -> Result<(), GrantError> {
        if self.agents.contains_key(&agent.name) {
            return Err(GrantError::Agent {
                spec: format!("{}={}", agent.name, agent.path.display()),
                reason: "this agent name is granted twice".into(),
            });
        }
        self.agents.insert(agent.name, agent.path);
        Ok(())
    }
}

/// Parses a size: a number with an optional unit `K`, `M`, `G` (also `KiB`, `MB`, ...;
/// all binary). `256M`, `1G`, `65536`.
pub fn parse_bytes(text: &str) -> Result<u64, GrantError> {
    let bad = |reason: &str| GrantError::Value {
        what: "size",
        value: text.to_owned(),
        reason: reason.to_owned(),
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| bad("expected a number with an optional unit K, M or G"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(bad("unknown unit; use K, M or G")),
    };
    let bytes = num * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > (1u64 << 40) as f64 {
        return Err(bad("must be from 1 byte to 1 TiB"));
    }
    Ok(bytes as u64)
}

/// Parses a duration: seconds (`2.5`), or a number with `ms`, `s`, `m` or `h`.
pub fn parse_duration(text: &str) -> Result<Duration, GrantError> {
    let bad = |reason: &str| GrantError::Value {
        what: "duration",
        value: text.to_owned(),
        reason: reason.to_owned(),
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| bad("expected seconds, or a number with ms, s, m or h"))?;
    let secs = match unit.trim() {
        "" | "s" => num,
        "ms" => num / 1000.0,
        "m" => num * 60.0,
        "h" => num * 3600.0,
        _ => return Err(bad("unknown unit; use ms, s, m or h")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 7.0 * 86_400.0 {
        return Err(bad("must be more than 0 and at most 7 days"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dir_grants_parse_with_modes_and_refuse_dotdot() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().display().to_string();
        let canon = std::fs::canonicalize(tmp.path()).unwrap();

        let g: DirGrant = host.parse().unwrap();
        assert_eq!(
            (g.host.clone(), g.guest.as_str(), g.read_only),
            (canon.clone(), host.as_str(), false)
        );
        let g: DirGrant = format!("{host}:/data:ro").parse().unwrap();
        assert_eq!((g.guest.as_str(), g.read_only), ("/data", true));
        let g: DirGrant = format!("{host}:ro").parse().unwrap();
        assert_eq!((g.guest.as_str(), g.read_only), (host.as_str(), true));
        let g: DirGrant = format!("{host}:/data/:rw").parse().unwrap();
        assert_eq!((g.guest.as_str(), g.read_only), ("/data", false));

        for bad in [
            format!("{host}:/a/../b"),
            format!("{host}:/a:b:c"),
            ":/data".to_owned(),
            format!("{host}/missing:/data"),
            format!("{host}\0:/x"),
        ] {
            assert!(bad.parse::<DirGrant>().is_err(), "{bad:?} accepted");
        }
        let file = tmp.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let err = format!("{}:/f", file.display())
            .parse::<DirGrant>()
            .unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn env_route_and_agent_grants_parse() {
        let e: EnvVar = "A=b=c".parse().unwrap();
        assert_eq!((e.key.as_str(), e.value.as_str()), ("A", "b=c"));
        assert!("=x".parse::<EnvVar>().is_err());
        assert!("novalue".parse::<EnvVar>().is_err());

        let r: RouteGrant = "fast=/tmp/ws".parse().unwrap();
        assert_eq!(r.name, "fast");
        assert!("../x=/tmp/ws".parse::<RouteGrant>().is_err());
        assert!("a/b=/tmp".parse::<RouteGrant>().is_err());
        assert!("x=".parse::<RouteGrant>().is_err());
        assert!("self=/tmp/ws".parse::<RouteGrant>().is_err());

        let tmp = tempfile::tempdir().unwrap();
        let wasm = tmp.path().join("a.wasm");
        std::fs::write(&wasm, b"\0asm").unwrap();
        let a: AgentGrant = format!("helper={}", wasm.display()).parse().unwrap();
        assert_eq!(a.name, "helper");
        assert!(
            format!("self={}", wasm.display())
                .parse::<AgentGrant>()
                .is_err()
        );
        assert!("x=/no/such/file.wasm".parse::<AgentGrant>().is_err());

        let err = "a\nb=/tmp/ws"
            .parse::<RouteGrant>()
            .unwrap_err()
            .to_string();
        assert!(err.contains(r#"name "a\nb" must be"#), "{err}");

        let mut grants = Grants::default();
        grants.add_route(r.clone()).unwrap();
        assert!(grants.add_route(r).is_err());
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_bytes("256M").unwrap(), 256 << 20);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1.5k").unwrap(), 1536);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        for bad in ["", "0", "M", "12X", "-1", "2T"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        for bad in ["", "0", "-3", "3d", "inf", "9999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
