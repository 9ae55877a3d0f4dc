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
