//! Every shipped config parses and validates (paths need not exist), and so does every
//! shipped architecture.

use samtune::model::architecture::resolve_architecture;
use samtune::train::TrainConfig;

fn toml_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn shipped_configs_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let configs = toml_files(&dir);
    for path in &configs {
        TrainConfig::load(path, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    }
    assert!(configs.len() >= 5);
    let architectures = toml_files(&dir.join("arch"));
    for path in &architectures {
        resolve_architecture(path.to_str().unwrap())
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    }
    assert!(!architectures.is_empty());
}
