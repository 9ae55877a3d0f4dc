//! Fine-tuning end to end on the tiny reference model and generated data.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use common::{config_with, fixtures_dir};
use samtune::data::synthetic::{write_dataset, Domain};
use samtune::train::{train, TrainConfig};
use samtune::weights::Checkpoint;

fn config(dir: &Path, name: &str, epochs: usize) -> TrainConfig {
    config_with(dir, name, epochs, &[])
}

fn dataset(dir: &Path) {
    write_dataset(&dir.join("data"), Domain::Source, 12, 64, 11).unwrap();
}

fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let checkpoint = Checkpoint::open(path).unwrap();
    checkpoint
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.to_bytes().unwrap().to_vec()))
        .collect()
}

fn run_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join("runs").join(name).join("checkpoints")
}

#[test]
fn training_lowers_the_loss_and_only_touches_the_decoder() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let config = config(dir.path(), "learn", 6);
    let outcome = train(&config, false, &AtomicBool::new(false)).unwrap();
    let history = &outcome.state.history;
    assert_eq!(history.len(), 6);
    assert!(
        history.last().unwrap().train_loss < history[0].train_loss,
        "{history:#?}"
    );
    assert!(outcome.state.zero_shot.is_some() && outcome.state.best_miou.is_some());

    let base = tensors(&fixtures_dir().join("tiny_sam.pth"));
    let tuned = tensors(&run_dir(dir.path(), "learn").join("last.safetensors"));
    assert_eq!(base.len(), tuned.len());
    let mut decoder_changed = 0;
    for ((name, a), (name_b, b)) in base.iter().zip(&tuned) {
        assert_eq!(name, name_b);
        if name.starts_with("mask_decoder.") {
            decoder_changed += (a != b) as usize;
        } else {
            assert!(
                a == b,
                "{name} changed: frozen weights must stay bit-identical"
            );
        }
    }
    assert!(
        decoder_changed > 20,
        "only {decoder_changed} decoder tensors changed"
    );
    let decoder_only =
        common::load_expected_from(&run_dir(dir.path(), "learn").join("decoder.safetensors"));
    assert_eq!(
        decoder_only.len(),
        tuned
            .iter()
            .filter(|(k, _)| k.starts_with("mask_decoder."))
            .count()
    );
    assert!(decoder_only.keys().all(|k| k.starts_with("mask_decoder.")));
    let metadata: serde_json::Value = serde_json::from_slice(
        &std::fs::read(run_dir(dir.path(), "learn").join("metadata.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(metadata["epoch"], 6);
    assert!(
        dir.path()
            .join("runs/learn/tensorboard")
            .read_dir()
            .unwrap()
            .count()
            > 0
    );
}

#[test]
fn two_epochs_equal_one_epoch_plus_a_resumed_one() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    train(
        &config(dir.path(), "straight", 2),
        false,
        &AtomicBool::new(false),
    )
    .unwrap();
    let mut first = config(dir.path(), "resumed", 2);
    first.train.stop_after_epochs = 1;
    let stopped = train(&first, false, &AtomicBool::new(false)).unwrap();
    assert!(stopped.interrupted && stopped.state.epoch == 1);
    let err = train(&first, false, &AtomicBool::new(false)).unwrap_err();
    assert!(format!("{err:#}").contains("--resume"), "{err:#}");
    let outcome = train(&first, true, &AtomicBool::new(false)).unwrap();
    assert_eq!(outcome.state.history.len(), 2);
    assert_same_tensors(
        &run_dir(dir.path(), "straight").join("last.safetensors"),
        &run_dir(dir.path(), "resumed").join("last.safetensors"),
    );
}

#[test]
fn the_tiny_model_learns_to_segment_the_objects_it_trains_on() {
    // Two generated images serve as train/ and val/: the random-weight model has no prior
    // to generalise from, so this checks that training learns (val IoU rises far above
    // zero-shot), not generalisation. Like the official code (same dynamics in PyTorch),
    // it first collapses to empty masks under the focal term, then learns to localise.
    let dir = tempfile::tempdir().unwrap();
    write_dataset(&dir.path().join("data/train"), Domain::Source, 2, 64, 11).unwrap();
    write_dataset(&dir.path().join("data/val"), Domain::Source, 2, 64, 11).unwrap();
    let config = config_with(
        dir.path(),
        "memorise",
        70,
        &[
            "train.images_per_batch=1",
            "train.lr=1e-3",
            "train.warmup_fraction=0.0",
            "train.min_lr_ratio=1.0",
            "prompts.multimask=false",
            "prompts.box_jitter=0.0",
        ],
    );
    let outcome = train(&config, false, &AtomicBool::new(false)).unwrap();
    let zero_shot = outcome.state.zero_shot.clone().unwrap().mean_iou;
    let best = outcome.state.best_miou.unwrap();
    assert!(
        best > zero_shot + 0.3,
        "val mIoU {zero_shot:.3} -> {best:.3}"
    );
    let history = &outcome.state.history;
    assert!(history.last().unwrap().train_loss < 0.5 * history[0].train_loss);
}

#[test]
fn an_interrupted_run_saves_a_resumable_state_and_a_diverging_one_stops() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    // Ctrl-C already pressed: the run stops after its first step, resumably
    let config = config(dir.path(), "interrupted", 2);
    let outcome = train(&config, false, &AtomicBool::new(true)).unwrap();
    assert!(outcome.interrupted);
    assert_eq!(outcome.state.epoch, 0);
    let checkpoints = run_dir(dir.path(), "interrupted");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(checkpoints.join("resume.json")).unwrap()).unwrap();
    let resume = checkpoints.join(manifest["folder"].as_str().unwrap());
    for file in ["model.bpk", "optim.bpk", "state.json"] {
        assert!(resume.join(file).is_file(), "{file} missing");
    }
    let finished = train(&config, true, &AtomicBool::new(false)).unwrap();
    assert_eq!(finished.state.epoch, 2);

    // a learning rate that blows the weights up: a clear error, not NaN checkpoints
    let diverging = config_with(dir.path(), "diverging", 2, &["train.lr=1e30"]);
    let err = format!(
        "{:#}",
        train(&diverging, false, &AtomicBool::new(false)).unwrap_err()
    );
    assert!(err.contains("diverged"), "{err}");
}

#[test]
fn data_parallel_training_matches_one_device() {
    // Two "devices" on the one CPU run the data-parallel path (replicas in threads, each
    // image's gradients on its replica, summed on the first): the same weights as one
    // device, up to floating-point order. With refinement clicks, so that the per-image
    // random streams are exercised too.
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let shared = ["prompts.refine_clicks=1", "train.images_per_batch=3"];
    let single = config_with(dir.path(), "one_device", 2, &shared);
    let parallel = config_with(
        dir.path(),
        "two_devices",
        2,
        &[shared[0], shared[1], r#"model.devices=["cpu", "cpu:1"]"#],
    );
    assert_eq!(parallel.model.devices.len(), 2);
    let a_outcome = train(&single, false, &AtomicBool::new(false)).unwrap();
    let b_outcome = train(&parallel, false, &AtomicBool::new(false)).unwrap();
    let floats = |bytes: &[u8]| -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let a = tensors(&run_dir(dir.path(), "one_device").join("last.safetensors"));
    let b = tensors(&run_dir(dir.path(), "two_devices").join("last.safetensors"));
    let names = |t: &[(String, Vec<u8>)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&a),
        names(&b),
        "the two checkpoints hold other tensors"
    );
    let base: std::collections::HashMap<String, Vec<u8>> =
        tensors(&fixtures_dir().join("tiny_sam.pth"))
            .into_iter()
            .collect();
    let mut moved = 0.0f32;
    let mut worst = 0.0f32;
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        // A key bias shifts every logit of a query row equally, so softmax makes its true
        // gradient zero and its value irrelevant; Adam turns the rounding noise left in
        // its gradient into steps of +-lr, which two gradient halves round differently.
        // Its effect (none) is checked on the outputs below instead.
        if name.ends_with("k_proj.bias") {
            continue;
        }
        let (x, y) = (floats(x), floats(y));
        let diff = x
            .iter()
            .zip(&y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        worst = worst.max(diff);
        let b0 = floats(&base[name]);
        moved = moved.max(
            x.iter()
                .zip(&b0)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max),
        );
    }
    // measured: 2.1e-6 (lr 3e-3, 4 steps move the weights by up to 1.2e-2)
    assert!(worst < 1e-5, "the two-device run differs by {worst}");
    let logits = |run: &str| {
        let (model, _) = samtune::load_sam(
            run_dir(dir.path(), run).join("last.safetensors"),
            None,
            &burn::tensor::Device::flex(),
        )
        .unwrap();
        let image = samtune::load_rgb(&dir.path().join("data/images/0003.png"), Default::default())
            .unwrap();
        let predictor = samtune::Predictor::new(&model);
        let encoded = predictor.encode(&image);
        let prompts =
            samtune::PromptBatch::from_boxes_and_points(vec![[8.0, 8.0, 40.0, 50.0]], Vec::new());
        let logits = predictor.predict(&encoded, &prompts, true).unwrap().logits;
        logits
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let (la, lb) = (logits("one_device"), logits("two_devices"));
    let scale = la.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = la
        .iter()
        .zip(&lb)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    // measured: 5.5e-7
    assert!(
        diff / scale < 3e-6,
        "the two runs predict differently: {:e}",
        diff / scale
    );
    assert!(moved > 1e-4, "training changed the weights ({moved})");
    let (la, lb) = (
        a_outcome.state.history[1].train_loss,
        b_outcome.state.history[1].train_loss,
    );
    assert!((la - lb).abs() < 1e-4 * la.abs().max(1.0), "{la} vs {lb}");
}

/// Every tensor of `a` equals `b`'s, bit for bit, and the two hold the same tensors.
fn assert_same_tensors(a: &Path, b: &Path) {
    let (a, b) = (tensors(a), tensors(b));
    let names = |t: &[(String, Vec<u8>)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&a),
        names(&b),
        "the two checkpoints hold other tensors"
    );
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{name} differs");
    }
}

#[test]
fn batches_drawn_ahead_train_the_same_weights_as_drawn_in_place() {
    // the background thread draws examples from per-example seeds: the same examples,
    // so the same weights, bit for bit (correction clicks on, so their seeds count too)
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let shared = ["prompts.refine_clicks=1", "train.images_per_batch=3"];
    let serial = config_with(
        dir.path(),
        "serial",
        2,
        &[shared[0], shared[1], "train.prefetch_batches=0"],
    );
    let ahead = config_with(
        dir.path(),
        "ahead",
        2,
        &[shared[0], shared[1], "train.prefetch_batches=3"],
    );
    train(&serial, false, &AtomicBool::new(false)).unwrap();
    let outcome = train(&ahead, false, &AtomicBool::new(false)).unwrap();
    assert_same_tensors(
        &run_dir(dir.path(), "serial").join("last.safetensors"),
        &run_dir(dir.path(), "ahead").join("last.safetensors"),
    );
    let log = std::fs::read_to_string(dir.path().join("runs/ahead/train.log")).unwrap();
    assert!(log.contains("data wait"), "{log}");
    // no data.test: the report says the best epoch was chosen on the set it reports
    let report = outcome.report.unwrap();
    assert!(report.test.is_none());
    let md = std::fs::read_to_string(dir.path().join("runs/ahead/report/report.md")).unwrap();
    assert!(md.contains("No test set"), "{md}");
}

#[test]
fn a_test_split_is_held_out_and_evaluated_once_with_the_best_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let config = config_with(dir.path(), "tested", 1, &["data.test=0.25"]);
    let outcome = train(&config, false, &AtomicBool::new(false)).unwrap();
    let log = std::fs::read_to_string(dir.path().join("runs/tested/train.log")).unwrap();
    // 12 images: 3 for validation, then 2 of the other 9 for the test (rounded)
    assert!(
        log.contains("7 train images") && log.contains("2 test images"),
        "{log}"
    );
    let test = outcome.report.unwrap().test.expect("a test report");
    assert_eq!(test.images, 2);
    assert!(test.fine_tuned.overall.objects > 0);
    let md = std::fs::read_to_string(dir.path().join("runs/tested/report/report.md")).unwrap();
    assert!(md.contains("Test set: 2 images"), "{md}");
}

#[test]
fn a_run_resumed_inside_an_epoch_ends_with_the_weights_of_an_uninterrupted_one() {
    // Ctrl-C already pressed: the run stops after its first step, one batch into epoch 1;
    // the resume continues at the second batch. Correction clicks on, gradient
    // accumulation across batches too.
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let shared = [
        "prompts.refine_clicks=1",
        "train.images_per_batch=1",
        "train.grad_accumulation=2",
    ];
    let straight = config_with(dir.path(), "straight", 2, &shared);
    let interrupted = config_with(dir.path(), "stopped", 2, &shared);
    let a = train(&straight, false, &AtomicBool::new(false)).unwrap();
    let stopped = train(&interrupted, false, &AtomicBool::new(true)).unwrap();
    assert!(stopped.interrupted && stopped.state.epoch == 0);
    let progress = stopped
        .state
        .progress
        .as_ref()
        .expect("stopped inside the epoch");
    assert_eq!(progress.batches, 2, "stopped at the first optimizer step");
    let b = train(&interrupted, true, &AtomicBool::new(false)).unwrap();
    assert_same_tensors(
        &run_dir(dir.path(), "straight").join("last.safetensors"),
        &run_dir(dir.path(), "stopped").join("last.safetensors"),
    );
    assert_eq!(a.state.step, b.state.step);
    assert_eq!(a.state.history[0].train_loss, b.state.history[0].train_loss);
}

#[test]
fn an_image_that_fails_mid_epoch_leaves_a_resume_point_after_the_batches_before_it() {
    // A training image that cannot be decoded (its header intact, so indexing passes)
    // stops the run when its batch is drawn; the batches before it are kept as a resume
    // point, and once the image is repaired the resumed run ends with the weights of a
    // run that never failed. Which image lands mid-epoch depends on the seeded order: the
    // images are tried in turn until one fails after the first batch.
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let shared = ["train.images_per_batch=1", "report.zero_shot=false"];
    let straight = config_with(dir.path(), "unbroken", 1, &shared);
    train(&straight, false, &AtomicBool::new(false)).unwrap();
    let images = dir.path().join("data/images");
    let mut names: Vec<_> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for (i, image) in names.iter().enumerate() {
        let name = format!("broken{i}");
        let intact = std::fs::read(image).unwrap();
        // the pixel data overwritten: the header (the size) reads, the pixels do not
        let mut broken_bytes = intact.clone();
        let pixels = intact.windows(4).position(|w| w == b"IDAT").unwrap() + 4;
        broken_bytes[pixels..pixels + 16].fill(0xff);
        std::fs::write(image, &broken_bytes).unwrap();
        let broken = config_with(dir.path(), &name, 1, &shared);
        let err = format!(
            "{:#}",
            train(&broken, false, &AtomicBool::new(false)).unwrap_err()
        );
        std::fs::write(image, &intact).unwrap();
        if !run_dir(dir.path(), &name).join("resume.json").exists() {
            // a validation image, or the first batch's: nothing trained to keep
            continue;
        }
        let file = image.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            err.contains("can be resumed") && err.contains(&file),
            "{err}"
        );
        let resumed = train(&broken, true, &AtomicBool::new(false)).unwrap();
        assert_eq!(resumed.state.epoch, 1);
        assert_same_tensors(
            &run_dir(dir.path(), "unbroken").join("last.safetensors"),
            &run_dir(dir.path(), &name).join("last.safetensors"),
        );
        return;
    }
    panic!("no training image was drawn after the first batch");
}

#[test]
fn a_refused_resume_changes_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    // a run that never started: an error, and no run folder
    let never = config(dir.path(), "never", 1);
    let err = format!(
        "{:#}",
        train(&never, true, &AtomicBool::new(false)).unwrap_err()
    );
    assert!(err.contains("no run to resume"), "{err}");
    assert!(!dir.path().join("runs/never").exists());
    // a run resumed with another base checkpoint: refused, its config kept
    let mut first = config(dir.path(), "kept", 2);
    first.train.stop_after_epochs = 1;
    train(&first, false, &AtomicBool::new(false)).unwrap();
    let saved = std::fs::read(dir.path().join("runs/kept/config.toml")).unwrap();
    let other = dir.path().join("other.pth");
    let mut bytes = std::fs::read(fixtures_dir().join("tiny_sam.pth")).unwrap();
    bytes.push(0);
    std::fs::write(&other, bytes).unwrap();
    let mut changed = first.clone();
    changed.model.checkpoint = other;
    let err = format!(
        "{:#}",
        train(&changed, true, &AtomicBool::new(false)).unwrap_err()
    );
    assert!(err.contains("cannot resume"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("runs/kept/config.toml")).unwrap(),
        saved
    );
}

#[test]
fn a_run_that_encodes_ahead_in_batches_trains_the_weights_of_one_encoding_in_its_epochs() {
    // encode_batch = 5: the 12 images encoded before the first step (batches of 5, 5, 2),
    // the epochs reading them back; encode_batch = 1: the first epoch encodes them
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let cache = |name: &str| format!("cache.dir={:?}", dir.path().join(name));
    let single = config_with(dir.path(), "single", 2, &[&cache("cache-single")]);
    let batched = config_with(
        dir.path(),
        "batched",
        2,
        &[&cache("cache-batched"), "cache.encode_batch=5"],
    );
    train(&single, false, &AtomicBool::new(false)).unwrap();
    train(&batched, false, &AtomicBool::new(false)).unwrap();
    assert_same_tensors(
        &run_dir(dir.path(), "single").join("last.safetensors"),
        &run_dir(dir.path(), "batched").join("last.safetensors"),
    );
    let log = std::fs::read_to_string(dir.path().join("runs/batched/train.log")).unwrap();
    assert!(
        log.contains("12 images encoded ahead (5 per pass), 0 already held"),
        "{log}"
    );
    // every read in the epochs and evaluations found its entry
    assert!(log.contains(" hits, 0 misses"), "{log}");
    // a second run finds them all
    let again = config_with(
        dir.path(),
        "again",
        1,
        &[&cache("cache-batched"), "cache.encode_batch=5"],
    );
    train(&again, false, &AtomicBool::new(false)).unwrap();
    let log = std::fs::read_to_string(dir.path().join("runs/again/train.log")).unwrap();
    assert!(
        log.contains("0 images encoded ahead (5 per pass), 12 already held"),
        "{log}"
    );
}

#[test]
fn embedding_in_batches_and_shards_fills_the_cache_as_one_image_at_a_time_does() {
    use samtune::train::embed::fill_cache;
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let device = common::device::test_device();
    let cache = |name: &str| format!("cache.dir={:?}", dir.path().join(name));
    let single = config_with(dir.path(), "single", 1, &[&cache("cache-single")]);
    let one = fill_cache(&single, &device, (0, 1), false).unwrap();
    assert_eq!((one.encoded, one.cached), (12, 0));
    // batches of 5 (a last one of 1 or 2), in two shards
    let batched = config_with(
        dir.path(),
        "batched",
        1,
        &[&cache("cache-batched"), "cache.encode_batch=5"],
    );
    let first = fill_cache(&batched, &device, (0, 2), false).unwrap();
    let second = fill_cache(&batched, &device, (1, 2), false).unwrap();
    assert_eq!((first.encoded, second.encoded), (6, 6));
    let again = fill_cache(&batched, &device, (0, 1), false).unwrap();
    assert_eq!((again.encoded, again.cached), (0, 12));

    let entries = |dir: &Path| {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        files
    };
    let (a, b) = (entries(&one.dir), entries(&first.dir));
    assert_eq!(a.len(), 12);
    let names = |files: &[PathBuf]| -> Vec<String> {
        files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(names(&a), names(&b), "the same images, under the same keys");
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(&b) {
        let (x, y) = (
            common::load_expected_from(x)["embedding"].values.clone(),
            common::load_expected_from(y)["embedding"].values.clone(),
        );
        assert_eq!(x.len(), y.len());
        worst = x
            .iter()
            .zip(&y)
            .fold(worst, |w, (p, q)| w.max((p - q).abs()));
    }
    // measured: identical on the CPU backend and on wgpu (lavapipe)
    assert_eq!(worst, 0.0, "batched embeddings differ by {worst:e}");
    let err = TrainConfig::load(
        &dir.path().join("single.toml"),
        &["cache.encode_batch=0".to_string()],
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("cache.encode_batch"), "{err:#}");
}
