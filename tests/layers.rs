//! The layering of `src/` (lib.rs states it): each layer imports only the layers before
//! it; the modules beside the layers (`error`, `device`, `fsutil`, `progress`, `alloc`) import none,
//! except that `error` names the error types of the layers it wraps.

use std::path::{Path, PathBuf};

const LAYERS: [&str; 10] = [
    "model", "weights", "predict", "data", "eval", "annotate", "train", "serve", "bench", "cli",
];
const BESIDE: [&str; 6] = [
    "error",
    "device",
    "fsutil",
    "progress",
    "alloc",
    "llvm_stubs",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_string()
}

/// The top-level modules named as `crate::<module>` in `text`.
fn imports(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.push(name);
    }
    out
}

#[test]
fn every_import_points_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut upward = Vec::new();
    let mut checked = 0;
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for target in imports(&text) {
            if target == module || BESIDE.contains(&target.as_str()) {
                continue;
            }
            checked += 1;
            let allowed = match (rank(&module), rank(&target)) {
                (Some(from), Some(to)) => to < from,
                // `error` wraps the error types of the layers below it
                (None, Some(_)) => {
                    module == "error" && ["model", "weights"].contains(&target.as_str())
                }
                _ => false,
            };
            if !allowed {
                upward.push(format!("{} imports crate::{target}", file.display()));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} imports found: is the scan broken?"
    );
    assert!(
        upward.is_empty(),
        "imports against the layering:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_scan_sees_an_upward_import() {
    // the check above must be able to fail
    assert_eq!(
        imports("use crate::train::config; x crate::cli"),
        ["train", "cli"]
    );
}

/// The files of `src/` and `tests/` (this one aside) whose code names burn's default
/// device. With a GPU backend compiled in (wgpu is a default feature) `Device::default()`
/// is that GPU, a software adapter included: the CPU is `Device::flex()`, and any other
/// device comes from `samtune::device`, which chooses and says which.
fn default_device_uses(dirs: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in dirs {
        rust_files(&root.join(dir), &mut files);
    }
    files
        .iter()
        .filter(|file| !file.ends_with("tests/layers.rs"))
        .filter(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            text.lines().any(names_the_default_device)
        })
        .map(|file| file.display().to_string())
        .collect()
}

fn names_the_default_device(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or("");
    code.contains("Device::default()")
}

#[test]
fn no_code_asks_burn_for_its_default_device() {
    assert!(names_the_default_device("let d = Device::default();"));
    assert!(!names_the_default_device(
        "let d = Device::flex(); // not Device::default()"
    ));
    let found = default_device_uses(&["src", "tests"]);
    assert!(
        found.is_empty(),
        "Device::default() is the GPU when one is compiled in; use Device::flex() or \
         samtune::device:\n{}",
        found.join("\n")
    );
}
