fn main() {
    std::process::exit(samtune::cli::main());
}
