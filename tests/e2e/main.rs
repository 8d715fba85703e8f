//! End-to-end tests: the real `nrvnad`, `wrk` and `flw` against the real model.
//!
//! One test binary (as ripgrep does) with a module per concern.

// In tests an unwrap that fails is the test failing, with its location.
#![allow(clippy::unwrap_used)]

mod agent_jobs;
mod cli;
mod daemon;
mod engine;
mod examples;
mod faults;
mod patterns;
mod sandbox;
mod setup;
mod startup;
