//! `samtune export`: the same tensors under the same names in every format.

mod common;

use std::path::Path;

use common::{fixtures_dir, samtune};
use samtune::weights::Checkpoint;

fn export(input: &Path, to: &str, out: &Path) {
    let output = samtune([
        "export",
        input.to_str().unwrap(),
        "--to",
        to,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn contents(path: &Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    Checkpoint::open(path)
        .unwrap()
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.to_vec(), t.to_bytes().unwrap().to_vec()))
        .collect()
}

#[test]
fn every_format_round_trips_the_official_state_dict() {
    let dir = tempfile::tempdir().unwrap();
    let original = contents(&fixtures_dir().join("tiny_sam.pth"));
    // from the wrapped training-script layout to a plain official .pth
    let pth = dir.path().join("out.pth");
    export(&fixtures_dir().join("tiny_sam_wrapped.pth"), "pth", &pth);
    assert_eq!(contents(&pth), original);
    let st = dir.path().join("out.safetensors");
    export(&pth, "safetensors", &st);
    assert_eq!(contents(&st), original);
    let bpk = dir.path().join("out.bpk");
    export(&st, "bpk", &bpk);
    assert_eq!(contents(&bpk), original);
}

#[test]
fn exporting_onto_the_input_or_from_a_non_checkpoint_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    let output = samtune(["export", junk.to_str().unwrap(), "--to", "safetensors"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("junk.pth"));
    assert!(!dir.path().join("junk.safetensors").exists());
}
