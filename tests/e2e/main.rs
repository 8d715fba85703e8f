//! End-to-end tests: the real `nrvnad`, `wrk` and `flw` against the real model.
//!
//! One test binary (as ripgrep does) with a module per concern.

// In tests an unwrap that fails is the test failing, with its location.
#![allow(clippy::unwrap_used)]

/// The components `tests/build.rs` builds, one constant each (`FX_ECHO`, `REFINE`, ...).
/// Not `allow(dead_code)` on purpose: a component no test runs is a warning here, and an
/// error under `clippy -D warnings`.
mod components {
    include!(concat!(env!("OUT_DIR"), "/components.rs"));
}

mod agent_jobs;
mod approval;
mod cli;
mod daemon;
mod engine;
mod examples;
mod faults;
mod first_hour;
mod follow_and_status;
mod grammar_input;
mod hardening;
mod http;
mod journal;
mod patterns;
mod prefix_cache;
mod remote;
mod remote_chain;
mod sandbox;
mod setup;
mod shared_workspace;
mod startup;
mod streaming;
