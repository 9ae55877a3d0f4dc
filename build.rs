//! `--features cuda` with `DOCS_RS=1`: CubeCL's build scripts then skip the LLVM download
//! and link, and samtune links stand-ins for the LLVM functions instead (src/llvm_stubs.rs).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(llvm_stubs)");
    println!("cargo::rerun-if-env-changed=DOCS_RS");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() && std::env::var_os("DOCS_RS").is_some() {
        println!("cargo::rustc-cfg=llvm_stubs");
    }
}
