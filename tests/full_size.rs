//! Parity on an official-size random-weight model (`make_fixtures.py --full vit_b`).
//! Too big to commit (375 MB): `.ci/run` generates it and runs this with `--ignored`,
//! pointing `SAMTUNE_FULL_FIXTURES` at the folder.

mod common;

use std::path::PathBuf;

use burn::tensor::Device;
use common::*;
use samtune::model::{Precision, SamVariant};
use samtune::predict::{EncodedImage, Predictor};
use samtune::weights::{load_sam, Checkpoint};
use serde_json::Value;

fn full_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("SAMTUNE_FULL_FIXTURES")
            .expect("set SAMTUNE_FULL_FIXTURES to the --full fixtures folder"),
    )
}

#[test]
#[ignore = "needs make_fixtures.py --full vit_b (375 MB); run by .ci/run"]
fn vit_b_random_checkpoint_matches_the_official_model() {
    let dir = full_dir();
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.join("vit_b_meta.json")).unwrap()).unwrap();
    let path = dir.join("sam_vit_b_random.pth");
    let checkpoint = Checkpoint::open(&path).unwrap();
    assert_eq!(
        checkpoint.architecture().unwrap().variant(),
        Some(SamVariant::VitB)
    );
    assert_eq!(
        checkpoint.parameter_counts().total() as u64,
        meta["num_parameters"].as_u64().unwrap()
    );
    assert_eq!(checkpoint.parameter_counts().total(), 93_735_472);
    assert_eq!(
        checkpoint.tensors.len() as u64,
        meta["num_state_dict_tensors"].as_u64().unwrap()
    );
    drop(checkpoint);

    let device = Device::flex();
    let (model, _) = load_sam(&path, Some(SamVariant::VitB), &device).unwrap();
    let expected = load_expected_from(&dir.join("vit_b_expected.safetensors"));
    let image = image::open(dir.join("scene_full.png")).unwrap().to_rgb8();
    let predictor = Predictor::new(&model);
    let encoded = predictor.encode(&image);
    let embedding_error = relative_error(
        &values(&encoded.embedding),
        &expected["image_embedding"].values,
    );
    println!("image_embedding: samtune vs PyTorch float32 {embedding_error:e}");
    // measured 1.2e-6
    assert_close(
        "image_embedding",
        &encoded.embedding,
        &expected["image_embedding"],
        5e-6,
    );
    // Random full-size weights make the decoder ill-conditioned: PyTorch's own float32
    // result is up to ~8e-5 away from the float64 one, and it amplifies the embedding's
    // last-bit differences further. Measured here: exact-GELU implementations that all
    // agree with erf to 1.5e-7 per element moved the end-to-end distance between 0.8e-4
    // and 1.4e-4 (the most accurate one the farthest). So the decoder is checked alone on
    // PyTorch's float32 embedding, against the float64 result like PyTorch's own float32
    // decoder (two float32 decoders that round differently are each ~5e-5 from it, so up
    // to ~1e-4 from each other), and the whole pipeline against the float64 result with a
    // margin for that amplification; a wrong formula anywhere is off by far more (the tanh
    // GELU differs by 1e-3 per element).
    let official_embedding = EncodedImage {
        embedding: tensor_from(&expected["image_embedding"], &device),
        ..encoded.clone()
    };
    for case in meta["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let prompts = prompt_batch(case);
        let multimask = case["multimask"].as_bool().unwrap();
        let decoder_only = predictor
            .predict(&official_embedding, &prompts, multimask)
            .unwrap();
        let end_to_end = predictor.predict(&encoded, &prompts, multimask).unwrap();
        for output in ["low_res_logits", "iou_predictions"] {
            let pick = |p: &samtune::predict::Prediction| match output {
                "low_res_logits" => values(&p.low_res_logits),
                _ => values(&p.iou_predictions),
            };
            let official = &expected[&format!("{name}.{output}")].values;
            let exact = &expected[&format!("{name}.{output}.f64")].values;
            let pytorch = relative_error(official, exact);
            let decoder = relative_error(&pick(&decoder_only), official);
            let decoder_exact = relative_error(&pick(&decoder_only), exact);
            let ours = relative_error(&pick(&end_to_end), exact);
            println!(
                "{name}.{output}: PyTorch float32 vs float64 {pytorch:e}; samtune's decoder on \
                 PyTorch's embedding vs PyTorch {decoder:e}, vs float64 {decoder_exact:e}; \
                 samtune end to end vs float64 {ours:e}"
            );
            // Both float32 decoders run on PyTorch's float32 embedding: samtune's must be as
            // close to the float64 result as PyTorch's own, within 2x and 3e-5 (measured on
            // AVX2 hosts: 0.66x to 1.17x of PyTorch's error; on an Intel AVX-512 host, whose
            // PyTorch rounds closer to float64, 1.3x to 3.5x, at most 1.0e-4 for the logits
            // and 2.8e-5 for an IoU prediction where PyTorch's is 7.8e-6); end to end
            // within 2x and 2e-5 (measured 0.79x to 1.62x). A numeric regression of 1e-4
            // fails both.
            assert!(
                decoder_exact < 2.0 * pytorch + 3e-5,
                "{name}.{output}: decoder {decoder_exact:e} from float64 (PyTorch float32: \
                 {pytorch:e}; samtune vs PyTorch {decoder:e})"
            );
            assert!(
                ours < 2.0 * pytorch + 2e-5,
                "{name}.{output}: {ours:e} from float64 (PyTorch float32: {pytorch:e})"
            );
        }
    }
}

#[test]
#[ignore = "needs make_fixtures.py --full vit_b (375 MB); run by .ci/run"]
fn vit_b_bf16_encoding_is_within_bf16_rounding_of_the_official_float32() {
    let dir = full_dir();
    let device = Device::flex();
    let path = dir.join("sam_vit_b_random.pth");
    let (model, _) = load_sam(&path, Some(SamVariant::VitB), &device).unwrap();
    let model = match model.with_encoder_precision(Precision::Bf16, &device) {
        Ok(model) => model,
        Err(refused) => {
            // a CPU with neither AMX nor AVX512-BF16 refuses it, saying so
            assert!(refused.to_string().contains("AMX"), "{refused}");
            println!("bf16 refused on this CPU: {refused}");
            return;
        }
    };
    let expected = load_expected_from(&dir.join("vit_b_expected.safetensors"));
    let image = image::open(dir.join("scene_full.png")).unwrap().to_rgb8();
    let encoded = Predictor::new(&model).encode(&image);
    let error = relative_error(
        &values(&encoded.embedding),
        &expected["image_embedding"].values,
    );
    println!("image_embedding: samtune bf16 vs PyTorch float32 {error:e}");
    // measured 7.3e-3 (PyTorch's bf16 autocast, on a random-weight ViT-B and input:
    // 1.1e-2, bench/NOTES.md); f32 rounding is 1e-6, a wrong product 1e-1 or more
    assert!(error < 1e-2, "bf16 embedding {error:e} from float32");
    assert!(error > 1e-4, "bf16 encoding ran in f32 ({error:e})");
}
