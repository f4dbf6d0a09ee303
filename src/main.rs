//! The `rbac-gateway` binary: parses the command line and runs one command.

use clap::Parser;

// glibc malloc's arena locks showed up at ~15% of the proxy's CPU under load (perf); mimalloc
// keeps per-thread heaps. The `mimalloc` crate, not a shim of our own: docs/performance-log.md
// (2026-11-26) has the paired run that decided it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use rbac_gateway::cli;
use rbac_gateway::runtime::config::{Cli, Command, EXIT_USAGE};

fn main() {
    rbac_gateway::runtime::config::unset_empty_switches();
    let parsed = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            // Printing clap's message can only fail when stderr/stdout is gone: nothing is
            // left to tell then, and the exit code still says what happened.
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let result = match parsed.command {
        Command::Serve(a) => cli::serve(a),
        Command::Migrate(a) => cli::migrate(a),
        Command::Check(a) => cli::check(a),
        Command::Explain(a) => cli::explain(a),
        Command::Drift(a) => cli::drift(a),
        Command::Sweep(a) => cli::sweep(a),
        Command::Matrix(a) => cli::matrix(a),
        Command::Diff(a) => cli::diff(a),
        Command::Rollout(a) => cli::rollout(a),
        Command::Mapping(a) => cli::mapping(a),
        Command::Cockpit(a) => cli::cockpit(a),
    };
    if let Err(exit) = result {
        eprintln!("rbac-gateway: {:#}", exit.error);
        std::process::exit(exit.code);
    }
}
