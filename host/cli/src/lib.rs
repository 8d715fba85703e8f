//! The nrvna host programs: `nrvnad` (the daemon), `wrk` (submit), `flw` (follow) and
//! `nrvna` (the umbrella command). Each binary in `src/bin/` is a thin `main` over the
//! matching module in [`cmd`]; the daemon's machinery lives in [`daemon`].

pub mod cli;
pub mod cmd;
pub mod daemon;
pub mod exit;
pub mod grant_args;
pub mod settings;
pub mod status;
pub mod thread_wait;
pub mod waiting;
