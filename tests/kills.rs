//! A training run killed (SIGKILL) at many moments, each time resumed: every file under
//! its final name stays readable, and the run that finishes ends with the weights of a
//! run never killed, bit for bit.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::fixtures_dir;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use samtune::Checkpoint;

fn write_config(dir: &Path, name: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
name = "{name}"
runs_dir = "{runs}"
[model]
checkpoint = "{ckpt}"
[data]
path = "{data}"
val_ratio = 0.25
max_objects_per_image = 4
[prompts]
refine_clicks = 1
[train]
epochs = 3
lr = 3e-3
images_per_batch = 1
warmup_fraction = 0.2
[cache]
dir = "{cache}"
"#,
        runs = dir.join("runs").display(),
        ckpt = fixtures_dir().join("tiny_sam.pth").display(),
        data = dir.join("data").display(),
        cache = dir.join("cache").display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn train(config: &Path, resume: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_samtune"));
    cmd.args(["train", "--config", config.to_str().unwrap()]);
    if resume {
        cmd.arg("--resume");
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

/// Every file of the run under its final name: checkpoints load, JSON parses.
fn assert_files_readable(run: &Path) {
    let checkpoints = run.join("checkpoints");
    for entry in std::fs::read_dir(&checkpoints)
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // a temporary file of the killed save, never read
        }
        if name.ends_with(".safetensors") && name != "decoder.safetensors" {
            let checkpoint = Checkpoint::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            checkpoint.architecture().unwrap();
        } else if name.ends_with(".json") {
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(&path).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

#[test]
fn a_run_killed_at_many_moments_resumes_to_the_weights_of_an_unkilled_run() {
    let dir = tempfile::tempdir().unwrap();
    samtune::data::synthetic::write_dataset(
        &dir.path().join("data"),
        samtune::data::synthetic::Domain::Source,
        12,
        64,
        11,
    )
    .unwrap();
    let straight = write_config(dir.path(), "straight");
    let started = Instant::now();
    assert!(train(&straight, false).status().unwrap().success());
    let whole = started.elapsed();

    let killed = write_config(dir.path(), "killed");
    let run = dir.path().join("runs/killed");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut kills = 0;
    let mut finished = false;
    for attempt in 0..12 {
        let resume = run.join("checkpoints/resume.json").is_file();
        let mut child = train(&killed, resume).spawn().unwrap();
        // kill points spread over a whole run's length, the first ones early
        let at = whole.mul_f64(rng.random_range(0.05..0.6));
        std::thread::sleep(at);
        if child.try_wait().unwrap().is_some() {
            finished = true;
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        assert_files_readable(&run);
        assert!(attempt < 11, "the run never finished");
    }
    if !finished {
        let resume = run.join("checkpoints/resume.json").is_file();
        let status = train(&killed, resume).status().unwrap();
        assert!(status.success(), "the last resume failed");
    }
    assert!(kills >= 4, "only {kills} kills");
    eprintln!("{kills} kills, each resumed");
    assert_files_readable(&run);
    let tensors = |path: &Path| {
        let checkpoint = Checkpoint::open(path).unwrap();
        checkpoint
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.to_bytes().unwrap().to_vec()))
            .collect::<Vec<_>>()
    };
    let a = tensors(
        &dir.path()
            .join("runs/straight/checkpoints/last.safetensors"),
    );
    let b = tensors(&run.join("checkpoints/last.safetensors"));
    assert_eq!(a.len(), b.len());
    for ((name, x), (other, y)) in a.iter().zip(&b) {
        assert_eq!(name, other);
        assert!(
            x == y,
            "{name}: the killed and resumed run differs ({kills} kills)"
        );
    }
}
