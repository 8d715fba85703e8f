//! End-to-end tests: the real `nrvnad`, `wrk` and `flw` against the real model.
//!
//! One test binary (as ripgrep does) with a module per concern.

mod agent_jobs;
mod cli;
mod daemon;
mod engine;
mod examples;
mod faults;
mod patterns;
mod sandbox;
