//! `director`: the daemon and its command-line interface.

use clap::Parser;

/// Highly available IPVS load balancer for bare-metal Kubernetes.
///
/// The daemon (`director run`), `director status` and the IPVS commands arrive
/// with the issues that build them; this binary currently reports its version.
#[derive(Debug, Parser)]
#[command(name = "director", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
