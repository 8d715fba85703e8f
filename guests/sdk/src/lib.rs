//! `nrvna-guest`: write nrvna agent components in Rust.
//!
//! A component is a `cdylib` crate with one `lib.rs`: a unit struct implementing
//! [`Agent`] and [`export_agent!`]. Inside `run` the component talks to the host through
//! the `nrvna:agent@0.1.0` interfaces (`wit/agent.wit`), wrapped here so that a
//! component reads like the shell scripts it replaces:
//!
//! ```ignore
//! use nrvna_guest::prelude::*;
//!
//! struct Hello;
//!
//! impl Agent for Hello {
//!     fn run(args: Vec<String>) -> Result<String, String> {
//!         let id = submit(&args.join(" "))?;   // wrk WS "$*"
//!         let text = follow(&id)?;             // flw WS "$id"
//!         Ok(text)
//!     }
//! }
//!
//! export_agent!(Hello);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the component is
//! `target/wasm32-wasip2/release/<crate>.wasm`. Run it with `nrvna exec`.
//!
//! Modules: [`jobs`] (submit, follow, fan-out), [`retry`], [`kv`], [`log`], [`agents`],
//! [`args`] (a small argument parser with usage errors), [`command`] (a component run
//! like a command: `--help`, flags, words, then the work; [`export_command!`]),
//! [`text`] (lenient parsing of model output), [`json`] (finding and checking JSON in
//! model output).

// The generated bindings and the export macro name this crate by its own name, so that
// they resolve the same inside this crate and in the components that use it.
extern crate self as nrvna_guest;

/// The raw bindings generated from `wit/agent.wit` (wit-bindgen 0.61). Components rarely
/// need them: the modules of this crate wrap every import.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "agent",
        pub_export_macro: true,
        export_macro_name: "__export_agent",
        default_bindings_module: "::nrvna_guest::bindings",
        runtime_path: "::nrvna_guest::__rt",
    });
}

#[doc(hidden)]
pub use wit_bindgen::rt as __rt;

pub mod agents;
pub mod args;
pub mod command;
mod error;
pub mod jobs;
pub mod json;
pub mod kv;
pub mod log;
pub mod retry;
pub mod text;

pub use agents::call;
pub use error::{Context, Error, Result};
pub use jobs::{
    Job, JobId, JobState, OWN_WORKSPACE, Options, Output, ask, cancel, follow, follow_all,
    follow_output, route_of, routes, run_all, status, submit, submit_all, wait_any,
};
pub use retry::Retry;
pub use serde_json;

/// The trait a component implements: `run(args) -> Result<String, String>`, the `run`
/// export of the WIT world `agent`. `Ok` text is the run's result (stdout of
/// `nrvna exec`, `result.txt` of an agent job); `Err` text is its failure.
pub use bindings::Guest as Agent;

/// Exports a type implementing [`Agent`] as the component's `run`.
///
/// ```ignore
/// struct MyAgent;
/// impl nrvna_guest::Agent for MyAgent { /* fn run(..) */ }
/// nrvna_guest::export_agent!(MyAgent);
/// ```
#[macro_export]
macro_rules! export_agent {
    ($ty:ident) => {
        $crate::bindings::__export_agent!($ty);
    };
}

/// Everything a component usually needs, for `use nrvna_guest::prelude::*;`.
pub mod prelude {
    pub use crate::args::{Arg, Parser};
    pub use crate::command::Flags;
    pub use crate::{
        Agent, Context, Error, Job, JobId, Options, Output, Retry, ask, call, export_agent,
        export_command, follow, follow_all, follow_output, kv, log, route_of, routes, run_all,
        submit, submit_all,
    };
}
