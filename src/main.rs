//! The `rbac-gateway` binary: turns transparent huge pages off for its process, parses the command
//! line and runs one command.

use clap::Parser;

// glibc malloc's arena locks showed up in the proxy's CPU profile under load (perf); mimalloc
// keeps per-thread heaps. The `mimalloc` crate, not a shim of our own: docs/performance-log.md
// has the paired run that decided it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use rbac_gateway::cli;
use rbac_gateway::cli::args::{Cli, Command};
use rbac_gateway::cli::EXIT_USAGE;

fn main() {
    no_transparent_huge_pages();
    rbac_gateway::cli::args::unset_empty_switches();
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
        Command::Test(a) => cli::test(a),
    };
    if let Err(exit) = result {
        eprintln!("rbac-gateway: {}", exit.text());
        std::process::exit(exit.code);
    }
}

/// Transparent huge pages off for this process (what `MIMALLOC_ALLOW_THP=0` does). mimalloc
/// asks for them on its arenas (`madvise`; the `no_thp` feature leaves that out), and a host with
/// THP set to `always` gives them unasked: a 2 MiB page is resident as soon as one byte of it is
/// touched: with them the gateway's RSS at many client connections was well above what it is
/// without (scripts/bench/connections.sh, docs/performance-log.md). The kernel checks the flag at each page fault, so memory mapped before `main` is covered
/// too. A kernel without the call (before 3.15) refuses it: nothing to do then.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
