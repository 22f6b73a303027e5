use clap::Parser;

/// weft's node agent (flannel-compatible overlay networking for Kubernetes).
#[derive(Parser, Debug)]
#[command(name = "weftd", version = weftd::VERSION)]
struct Args {}

fn main() -> std::process::ExitCode {
    let _args = Args::parse();
    eprintln!("weftd: the node agent is not implemented yet; only --version and --help work");
    std::process::ExitCode::from(2)
}
