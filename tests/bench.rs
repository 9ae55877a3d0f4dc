//! Smoke test of `samtune bench`: every case runs at tiny size and reports.

mod common;

use common::samtune;

#[test]
fn bench_runs_every_case_and_prints_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let output = samtune([
        "bench",
        "--tiny",
        "--reps",
        "1",
        "--ft-images",
        "1",
        "--ft-epochs",
        "1",
        "--threads",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for case in [
        "encoder",
        "decoder_step",
        "prompt_latency",
        "finetune",
        "load",
    ] {
        assert!(stdout.contains(case), "{case} missing:\n{stdout}");
    }
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    for r in results {
        assert!(r["median_s"].as_f64().unwrap() > 0.0);
        assert!(r["peak_rss_mb"].as_f64().unwrap() > 0.0);
    }
    assert!(results[0]["flops"].as_f64().unwrap() > 1e6);
}

#[test]
fn the_data_case_indexes_and_trains_generated_sets() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("data.json");
    let output = samtune([
        "bench",
        "--case",
        "data",
        "--data-sizes",
        "6",
        "--data-side",
        "64",
        "--data-objects",
        "3",
        "--data-steps",
        "2",
        "--coco-images",
        "20",
        "--coco-annotations",
        "60",
        "--data-dir",
        dir.path().join("sets").to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = doc["data"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "labels, COCO and the large COCO file");
    for row in &rows[..2] {
        assert_eq!(row["images"], 6);
        assert_eq!(row["objects"], 18);
        assert!(row["step_ms"].as_f64().unwrap() > 0.0);
        assert!((0.0..1.0).contains(&row["data_wait_share"].as_f64().unwrap()));
    }
    assert_eq!(rows[2]["objects"], 60);
}
