use clap::Parser;

fn main() {
    samtune::alloc::tune_for_tensors();
    let cli = samtune::cli::Cli::parse();
    if let Err(err) = samtune::cli::run(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
