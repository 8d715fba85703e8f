//! One module per program: `nrvnad`, `wrk`, `flw`, `nrvna` (with `nrvna exec`, the agent
//! runner, `nrvna ps`, and its benchmark).

pub mod approve;
pub mod bench;
pub mod exec;
pub mod flw;
pub mod nrvna;
pub mod nrvnad;
pub mod ps;
pub mod trace;
pub mod wrk;
