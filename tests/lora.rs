//! LoRA fine-tuning and other input sizes: what trains, what is written, and that the
//! merged weights are the adapted model.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use burn::tensor::{Device, Tensor};
use common::fixtures_dir;
use samtune::data::synthetic::{write_dataset, Domain};
use samtune::weights::adapters::Adapters;
use samtune::weights::load_sam_at;
use samtune::{load_sam, train, Checkpoint, Predictor, PromptBatch, Sam, TrainConfig};

/// The shared test configuration at a LoRA learning rate, 2 epochs, no zero-shot pass.
fn config(dir: &Path, name: &str, overrides: &[&str]) -> TrainConfig {
    let mut all = vec!["train.lr=1e-2", "report.zero_shot=false"];
    all.extend_from_slice(overrides);
    common::config_with(dir, name, 2, &all)
}

fn checkpoints(dir: &Path, name: &str) -> PathBuf {
    dir.join("runs").join(name).join("checkpoints")
}

fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    Checkpoint::open(path)
        .unwrap()
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.to_bytes().unwrap().to_vec()))
        .collect()
}

/// The low-res logits of a box prompt on the fixture scene.
fn logits(model: &Sam) -> Vec<f32> {
    let image = image::open(fixtures_dir().join("scene.png"))
        .unwrap()
        .to_rgb8();
    let predictor = Predictor::new(model);
    let encoded = predictor.encode(&image);
    let prompts = PromptBatch::from_boxes_and_points(vec![[40.0, 30.0, 220.0, 170.0]], vec![]);
    let p = predictor.predict(&encoded, &prompts, true).unwrap();
    p.low_res_logits
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn lora_decoder_training_changes_only_the_adapted_weights_and_merges_exactly() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(&dir.path().join("data"), Domain::Source, 8, 64, 21).unwrap();
    let config = config(dir.path(), "lora", &["model.trainable=lora-decoder"]);
    train(&config, false, &AtomicBool::new(false)).unwrap();
    let out = checkpoints(dir.path(), "lora");
    assert!(
        !out.join("decoder.safetensors").exists(),
        "nothing trains in full"
    );

    // the adapters file: factors alone, PEFT names and layout
    let adapters_file = out.join("adapters.safetensors");
    let factors = common::load_expected_from(&adapters_file);
    assert!(factors
        .keys()
        .all(|k| k.contains(".lora_A.weight") || k.contains(".lora_B.weight")));
    let layer = "mask_decoder.transformer.layers.0.self_attn.q_proj";
    assert_eq!(
        factors[&format!("{layer}.lora_A.weight")].shape[0],
        4,
        "[r, in]"
    );
    assert_eq!(
        factors[&format!("{layer}.lora_B.weight")].shape[1],
        4,
        "[out, r]"
    );
    let adapted: Vec<String> = factors
        .keys()
        .filter_map(|k| k.strip_suffix(".lora_A.weight"))
        .map(|l| format!("{l}.weight"))
        .collect();
    assert!(adapted.len() >= 8, "{adapted:?}");

    // only the adapted weights differ from the base (merged into last.safetensors)
    let base = tensors(&fixtures_dir().join("tiny_sam.pth"));
    let last = tensors(&out.join("last.safetensors"));
    assert_eq!(
        base.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        last.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    let mut changed = 0;
    for ((name, a), (_, b)) in base.iter().zip(&last) {
        if adapted.contains(name) {
            changed += (a != b) as usize;
        } else {
            assert!(a == b, "{name} changed, and it has no adapter");
        }
    }
    assert!(
        changed >= adapted.len() / 2,
        "{changed} of {} adapted weights moved",
        adapted.len()
    );

    // the adapters merged into the base again equal last.safetensors, and the model with
    // the adapters attached (W + alpha/r A B in every forward) predicts what the merged does
    // (merged on the device the run trained on: bit equality is per device)
    let device = common::device::test_device();
    let adapters = Adapters::read(&adapters_file).unwrap();
    let attached = adapters
        .attach_to(&fixtures_dir().join("tiny_sam.pth"), &device)
        .unwrap();
    let (merged, _) = adapters
        .merge_into(&fixtures_dir().join("tiny_sam.pth"), &device)
        .unwrap();
    let (saved, _) = load_sam(out.join("last.safetensors"), None, &device).unwrap();
    let (a, m, s) = (logits(&attached), logits(&merged), logits(&saved));
    assert!(
        relative_error(&a, &m) < 1e-5,
        "attached vs merged: {:e}",
        relative_error(&a, &m)
    );
    assert_eq!(m, s, "the merge is the saved checkpoint");
}

#[test]
fn adapters_refuse_a_base_they_were_not_trained_on() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(&dir.path().join("data"), Domain::Source, 6, 64, 22).unwrap();
    let config = config(
        dir.path(),
        "lora",
        &["model.trainable=lora-all", "train.epochs=1"],
    );
    train(&config, false, &AtomicBool::new(false)).unwrap();
    let adapters =
        Adapters::read(&checkpoints(dir.path(), "lora").join("adapters.safetensors")).unwrap();
    let other = dir.path().join("other.pth");
    let mut bytes = std::fs::read(fixtures_dir().join("tiny_sam.pth")).unwrap();
    bytes.push(b'\n');
    std::fs::write(&other, bytes).unwrap();
    let err = adapters
        .merge_into(&other, &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("other.pth") && err.contains("not the checkpoint"),
        "{err}"
    );
}

#[test]
fn lora_encoder_training_keeps_the_encoder_bases_and_trains_the_decoder() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(&dir.path().join("data"), Domain::Source, 6, 64, 23).unwrap();
    let config = config(
        dir.path(),
        "enc",
        &[
            "model.trainable=lora-encoder",
            "train.epochs=1",
            "train.checkpoint_activations=true",
        ],
    );
    let outcome = train(&config, false, &AtomicBool::new(false)).unwrap();
    assert_eq!(outcome.state.epoch, 1);
    let out = checkpoints(dir.path(), "enc");
    let factors = common::load_expected_from(&out.join("adapters.safetensors"));
    assert!(factors
        .keys()
        .all(|k| k.starts_with("image_encoder.blocks.")));
    let base = tensors(&fixtures_dir().join("tiny_sam.pth"));
    let last = tensors(&out.join("last.safetensors"));
    let (mut decoder, mut encoder_targets) = (0, 0);
    for ((name, a), (_, b)) in base.iter().zip(&last) {
        let target = name.contains(".attn.qkv.weight") || name.contains(".attn.proj.weight");
        if name.starts_with("mask_decoder.") {
            decoder += (a != b) as usize;
        } else if name.starts_with("image_encoder.") && target {
            encoder_targets += (a != b) as usize;
        } else {
            assert!(a == b, "{name} changed");
        }
    }
    assert!(
        decoder > 10 && encoder_targets > 0,
        "{decoder} decoder, {encoder_targets} encoder"
    );
}

#[test]
fn lora_runs_resume_and_split_across_devices_as_decoder_runs_do() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(&dir.path().join("data"), Domain::Source, 8, 64, 25).unwrap();
    let lora = "model.trainable=lora-all";
    train(
        &config(dir.path(), "straight", &[lora]),
        false,
        &AtomicBool::new(false),
    )
    .unwrap();
    let first = config(dir.path(), "resumed", &[lora, "train.stop_after_epochs=1"]);
    assert!(
        train(&first, false, &AtomicBool::new(false))
            .unwrap()
            .interrupted
    );
    train(&first, true, &AtomicBool::new(false)).unwrap();
    // every tensor of both files, bit for bit
    let values = |run: &str, file: &str| {
        let mut all: Vec<(String, Vec<f32>)> =
            common::load_expected_from(&checkpoints(dir.path(), run).join(file))
                .into_iter()
                .map(|(name, t)| (name, t.values))
                .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    };
    for file in ["last.safetensors", "adapters.safetensors"] {
        let (a, b) = (values("straight", file), values("resumed", file));
        assert_eq!(a.len(), b.len(), "{file}");
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            assert!(x == y, "{file}: {name} differs after the resume");
        }
    }

    // two "devices" on the one CPU, one image of each batch of two on each: the gradients
    // are summed in the one device's order, so the adapters are the same bit for bit
    let devices = r#"model.devices=["cpu", "cpu:1"]"#;
    train(
        &config(dir.path(), "two_devices", &[lora, devices]),
        false,
        &AtomicBool::new(false),
    )
    .unwrap();
    let flat = |run: &str| -> Vec<f32> {
        values(run, "adapters.safetensors")
            .into_iter()
            .flat_map(|(_, v)| v)
            .collect()
    };
    let (one, two) = (flat("straight"), flat("two_devices"));
    assert_eq!(one.len(), two.len());
    assert!(
        one == two,
        "two devices differ by {:e} (relative)",
        relative_error(&two, &one)
    );
}

#[test]
fn another_input_size_resizes_the_grid_tensors_and_its_own_size_changes_nothing() {
    let device = Device::flex();
    let path = fixtures_dir().join("tiny_sam.pth");
    let (plain, architecture) = load_sam(&path, None, &device).unwrap();
    let own = architecture.image_encoder.img_size;
    let (same, _) = load_sam_at(&path, None, Some(own), &device).unwrap();
    assert_eq!(
        logits(&plain),
        logits(&same),
        "bit-identical at its own size"
    );

    let patch = architecture.image_encoder.patch_size;
    let smaller = own - 2 * patch;
    let (model, resized) = load_sam_at(&path, None, Some(smaller), &device).unwrap();
    assert_eq!(resized.image_encoder.img_size, smaller);
    assert_eq!(model.img_size, smaller);
    assert_eq!(
        model.prompt_encoder.image_embedding_size,
        [smaller / patch; 2]
    );
    assert_eq!(
        logits(&model).len(),
        3 * (4 * smaller / patch).pow(2),
        "low-res masks follow"
    );

    // written, the checkpoint records its size; read back, it is that size
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("small.safetensors");
    samtune::weights::save_checkpoint(&model, &resized, &out, &Default::default(), &|_| true)
        .unwrap();
    let checkpoint = Checkpoint::open(&out).unwrap();
    assert_eq!(
        checkpoint.architecture().unwrap().image_encoder.img_size,
        smaller
    );
    assert_eq!(
        checkpoint.tensors["image_encoder.pos_embed"].shape.to_vec(),
        vec![
            1,
            smaller / patch,
            smaller / patch,
            architecture.image_encoder.embed_dim
        ]
    );
    let err = load_sam_at(&path, None, Some(own + 3), &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("img_size") && err.contains("patch size"),
        "{err}"
    );
}

#[test]
fn a_semantic_head_beside_decoder_adapters_resumes_bit_for_bit() {
    // lora-decoder: the head is the one part trained in full beside the adapters, so the
    // resume state must hold it (and the optimizer state keyed by its parameter ids)
    let dir = tempfile::tempdir().unwrap();
    write_dataset(&dir.path().join("data"), Domain::Source, 8, 64, 27).unwrap();
    let semantic = [
        "model.trainable=lora-decoder",
        "task=semantic",
        "data.classes=[1, 2]",
    ];
    train(
        &config(dir.path(), "straight", &semantic),
        false,
        &AtomicBool::new(false),
    )
    .unwrap();
    let mut first = semantic.to_vec();
    first.push("train.stop_after_epochs=1");
    let resumed = config(dir.path(), "resumed", &first);
    assert!(
        train(&resumed, false, &AtomicBool::new(false))
            .unwrap()
            .interrupted
    );
    train(&resumed, true, &AtomicBool::new(false)).unwrap();
    let straight = tensors(&checkpoints(dir.path(), "straight").join("last.safetensors"));
    let again = tensors(&checkpoints(dir.path(), "resumed").join("last.safetensors"));
    assert_eq!(straight.len(), again.len());
    let head = straight
        .iter()
        .filter(|(k, _)| k.starts_with("mask_decoder.semantic."))
        .count();
    assert!(head > 0);
    for ((name, a), (_, b)) in straight.iter().zip(&again) {
        assert!(a == b, "{name} differs after the resume");
    }
}

/// The `A` factors of `model`, in module order.
fn factors_a(model: &Sam) -> Vec<Vec<f32>> {
    struct Collect(Vec<String>, Vec<Vec<f32>>);
    impl burn::module::ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.0.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if self.0.join(".").ends_with(".lora.a") {
                self.1.push(common::values(&param.val()));
            }
        }
    }
    let mut collect = Collect(Vec::new(), Vec::new());
    burn::module::Module::visit(model, &mut collect);
    collect.1
}

#[test]
fn the_initial_factors_depend_on_the_seed_alone() {
    // burn draws from the device's one generator, which other models and threads advance:
    // a run's adapters must not depend on what else the process draws
    let device = Device::flex();
    let path = fixtures_dir().join("tiny_sam.pth");
    let lora = samtune::model::lora::LoraConfig::default();
    let patterns = lora.patterns(&[samtune::model::lora::LoraPlace::MaskDecoder]);
    let adapted = |seed: u64| {
        let (model, _) = load_sam(&path, None, &device).unwrap();
        factors_a(&lora.apply(model, &patterns, seed).unwrap())
    };
    // another thread reseeding and drawing from the device's generator meanwhile
    let stop = AtomicBool::new(false);
    let (first, again) = std::thread::scope(|scope| {
        scope.spawn(|| {
            for round in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                device.seed(round);
                let _ = Tensor::<2>::random([32, 32], burn::tensor::Distribution::Default, &device);
            }
        });
        let drawn = (adapted(7), adapted(7));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        drawn
    });
    assert!(first.len() >= 8);
    assert!(first == again, "the same seed drew other factors");
    let other = adapted(8);
    assert!(first != other, "another seed drew the same factors");
    // N(0, 1/rank): the draws have that spread
    let all: Vec<f32> = first.concat();
    let std = (all.iter().map(|v| v * v).sum::<f32>() / all.len() as f32).sqrt();
    let expected = 1.0 / lora.rank as f32;
    assert!((std - expected).abs() < 0.1 * expected, "std {std}");
}
