//! One module per program: `nrvnad`, `wrk`, `flw`, `nrvna`.

pub mod flw;
pub mod nrvna;
pub mod nrvnad;
pub mod wrk;
