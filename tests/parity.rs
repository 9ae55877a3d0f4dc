//! Parity with the official PyTorch implementation on a seeded random-weight model
//! (fixtures from `tests/reference/make_fixtures.py`).

mod common;

use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use samtune::model::image_encoder::get_rel_pos;
use samtune::predict::transforms::{normalize_and_pad, resize_longest_side};
use samtune::predict::Predictor;
use samtune::weights::{load_sam, Checkpoint};
use serde_json::Value;

const TOL: f32 = 1e-4;

fn meta() -> Value {
    let path = fixtures_dir().join("tiny_meta.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn checkpoint_path(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

fn scene() -> image::RgbImage {
    image::open(fixtures_dir().join("scene.png"))
        .unwrap()
        .to_rgb8()
}

#[test]
fn architecture_is_inferred_from_the_checkpoint() {
    let meta = meta();
    let checkpoint = Checkpoint::open(checkpoint_path("tiny_sam.pth")).unwrap();
    let config = checkpoint.architecture().unwrap();
    let c = &meta["config"];
    let enc = &config.image_encoder;
    assert_eq!(enc.img_size as u64, c["img_size"].as_u64().unwrap());
    assert_eq!(enc.embed_dim as u64, c["embed_dim"].as_u64().unwrap());
    assert_eq!(enc.depth as u64, c["depth"].as_u64().unwrap());
    assert_eq!(enc.num_heads as u64, c["num_heads"].as_u64().unwrap());
    assert_eq!(enc.window_size as u64, c["window_size"].as_u64().unwrap());
    let global: Vec<u64> = c["global_attn_indexes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(
        enc.global_attn_indexes
            .iter()
            .map(|&v| v as u64)
            .collect::<Vec<_>>(),
        global
    );
    assert_eq!(
        config.decoder.mlp_dim as u64,
        c["decoder_mlp_dim"].as_u64().unwrap()
    );
    assert_eq!(
        checkpoint.parameter_counts().total() as u64,
        meta["num_parameters"].as_u64().unwrap()
    );
    assert_eq!(config.variant(), None, "a custom architecture");
}

#[test]
fn resize_longest_side_matches_pil_bit_for_bit() {
    let expected = load_expected("tiny_expected.safetensors");
    for case in meta()["resize_cases"].as_array().unwrap() {
        let v: Vec<u32> = case
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let (h, w, target) = (v[0], v[1], v[2]);
        let out = resize_longest_side(&pattern_image(h, w), target as usize);
        let reference = &expected[&format!("resize.{h}x{w}to{target}")];
        assert_eq!(
            vec![out.height() as usize, out.width() as usize, 3],
            reference.shape,
            "{h}x{w}->{target}: size"
        );
        let different = out
            .as_raw()
            .iter()
            .zip(&reference.values)
            .filter(|(a, b)| **a as f32 != **b)
            .count();
        assert_eq!(
            different, 0,
            "{h}x{w}->{target}: {different} bytes differ from PIL"
        );
    }
}

#[test]
fn rel_pos_lookup_and_interpolation_match() {
    let expected = load_expected("tiny_expected.safetensors");
    let device = Device::default();
    for case in meta()["rel_pos_cases"].as_array().unwrap() {
        let v: Vec<usize> = case
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let (q, k, len) = (v[0], v[1], v[2]);
        let table = &expected[&format!("rel_pos.{q}.{k}.{len}.table")];
        let table =
            Tensor::<2>::from_data(TensorData::new(table.values.clone(), [len, 6]), &device);
        let out = get_rel_pos(q, k, table);
        assert_close(
            &format!("rel_pos {q} {k} {len}"),
            &out,
            &expected[&format!("rel_pos.{q}.{k}.{len}.out")],
            1e-6,
        );
    }
}

#[test]
fn preprocessing_embedding_and_every_prompt_kind_match() {
    let device = Device::default();
    let expected = load_expected("tiny_expected.safetensors");
    let (model, _) = load_sam(checkpoint_path("tiny_sam.pth"), None, &device).unwrap();
    let predictor = Predictor::new(&model);
    let image = scene();

    let (input, input_size) = predictor.preprocess(&image);
    assert_eq!(input_size, [213, 320]);
    assert_close("preprocessed", &input, &expected["preprocessed"], 1e-6);
    assert_close(
        "dense_pe",
        &model.prompt_encoder.get_dense_pe(),
        &expected["dense_pe"],
        1e-5,
    );

    let encoded = predictor.encode(&image);
    assert_close(
        "image_embedding",
        &encoded.embedding,
        &expected["image_embedding"],
        TOL,
    );

    for case in meta()["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut prompts = prompt_batch(case);
        if case.get("mask_input_from").is_some() {
            prompts.mask_input = Some(tensor_from(
                &expected[&format!("{name}.mask_input")],
                &device,
            ));
        }
        let multimask = case["multimask"].as_bool().unwrap();
        let prediction = predictor.predict(&encoded, &prompts, multimask).unwrap();
        assert_close(
            &format!("{name}: low_res_logits"),
            &prediction.low_res_logits,
            &expected[&format!("{name}.low_res_logits")],
            TOL,
        );
        assert_close(
            &format!("{name}: iou_predictions"),
            &prediction.iou_predictions,
            &expected[&format!("{name}.iou_predictions")],
            TOL,
        );
        if let Some(reference) = expected.get(&format!("{name}.logits")) {
            assert_close(
                &format!("{name}: logits"),
                &prediction.logits,
                reference,
                TOL,
            );
        }
        // Binary masks agree wherever the logit is not within rounding of the threshold.
        let logits = values(&prediction.logits);
        let scale = logits.iter().fold(0f32, |m, v| m.max(v.abs()));
        let masks = &expected[&format!("{name}.masks")];
        assert_eq!(
            prediction.logits.dims().to_vec(),
            masks.shape,
            "{name}: mask shape"
        );
        let flipped = logits
            .iter()
            .zip(&masks.values)
            .filter(|(l, m)| (**l > 0.0) != (**m > 0.5) && l.abs() > scale * 1e-4)
            .count();
        assert_eq!(
            flipped, 0,
            "{name}: {flipped} mask pixels differ away from the threshold"
        );
    }
}

#[test]
fn prompt_encoder_embeddings_match() {
    let device = Device::default();
    let expected = load_expected("tiny_expected.safetensors");
    let (model, _) = load_sam(checkpoint_path("tiny_sam.pth"), None, &device).unwrap();
    let case = meta()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "box_point")
        .unwrap()
        .clone();
    let prompts = prompt_batch(&case).to_prompts([200, 300], model.img_size, &device);
    let (sparse, dense) = model
        .prompt_encoder
        .forward(prompts.points, prompts.boxes, None);
    assert_close("sparse", &sparse, &expected["box_point.sparse"], 1e-5);
    assert_close("dense", &dense, &expected["box_point.dense"], 1e-6);
}

#[test]
fn wrapped_checkpoint_loads_the_same_weights() {
    let device = Device::default();
    let wrapped = Checkpoint::open(checkpoint_path("tiny_sam_wrapped.pth")).unwrap();
    assert_eq!(wrapped.prefix, "model.module.");
    let plain = Checkpoint::open(checkpoint_path("tiny_sam.pth")).unwrap();
    assert_eq!(wrapped.shapes(), plain.shapes());
    let (a, _) = load_sam(checkpoint_path("tiny_sam.pth"), None, &device).unwrap();
    let (b, _) = load_sam(checkpoint_path("tiny_sam_wrapped.pth"), None, &device).unwrap();
    let image = resize_longest_side(&scene(), a.img_size);
    let input = normalize_and_pad(&image, a.img_size, a.pixel_mean, a.pixel_std, &device);
    let ea = values(&a.image_encoder.forward(input.clone()));
    let eb = values(&b.image_encoder.forward(input));
    assert_eq!(ea, eb);
}

/// A decoder training step: loss and gradients equal PyTorch's for the same model,
/// embedding, boxes and targets (fixture `train_step.*`).
#[test]
fn training_step_loss_and_gradients_match() {
    use samtune::train::loss::{sam_loss, LossConfig};

    let device = Device::default().autodiff();
    let expected = load_expected("tiny_expected.safetensors");
    let (mut model, _) = load_sam(checkpoint_path("tiny_sam.pth"), None, &device).unwrap();
    model.image_encoder = model.image_encoder.freeze();
    model.prompt_encoder = model.prompt_encoder.freeze();
    let embedding = tensor_from(&expected["image_embedding"], &device);
    let targets = tensor_from(&expected["train_step.targets"], &device);
    let boxes = &expected["train_step.boxes"];
    let boxes = Tensor::<2>::from_data(
        TensorData::new(boxes.values.clone(), [boxes.shape[0], 4]),
        &device,
    );
    let prompts = samtune::model::Prompts {
        boxes: Some(boxes),
        ..Default::default()
    };
    let out = model.decode(embedding, prompts).select(true);
    let terms = sam_loss(
        out.masks,
        out.iou_predictions,
        targets,
        &LossConfig::default(),
    );
    let loss = values(&terms.total)[0];
    let reference = expected["train_step.loss"].values[0];
    assert!(
        (loss - reference).abs() / reference.abs() < 1e-4,
        "loss {loss} vs {reference}"
    );
    let grads = terms.total.backward();
    // (name, gradient as [shape, values]); Linear weights transposed to PyTorch's [out, in]
    let d = &model.mask_decoder;
    let t = &d.transformer;
    let bias = |l: &burn::nn::Linear| l.bias.clone().expect("Linear layers have biases");
    let checks = [
        (
            "iou_token.weight",
            grad_of(&d.iou_token.weight, &grads, false),
        ),
        (
            "mask_tokens.weight",
            grad_of(&d.mask_tokens.weight, &grads, false),
        ),
        (
            "transformer.layers.0.self_attn.q_proj.weight",
            grad_of(&t.layers[0].self_attn.q_proj.weight, &grads, true),
        ),
        (
            "transformer.layers.1.cross_attn_image_to_token.v_proj.bias",
            grad_of(
                &bias(&t.layers[1].cross_attn_image_to_token.v_proj),
                &grads,
                false,
            ),
        ),
        (
            "transformer.final_attn_token_to_image.out_proj.weight",
            grad_of(&t.final_attn_token_to_image.out_proj.weight, &grads, true),
        ),
        (
            "transformer.norm_final_attn.weight",
            grad_of(&t.norm_final_attn.gamma, &grads, false),
        ),
        (
            "output_upscaling.0.weight",
            grad_of(&d.output_upscaling.conv1.weight, &grads, false),
        ),
        (
            "output_upscaling.1.weight",
            grad_of(&d.output_upscaling.ln1.weight, &grads, false),
        ),
        (
            "output_hypernetworks_mlps.2.layers.0.weight",
            grad_of(
                &d.output_hypernetworks_mlps[2].layers[0].weight,
                &grads,
                true,
            ),
        ),
        (
            "iou_prediction_head.layers.2.bias",
            grad_of(&bias(&d.iou_prediction_head.layers[2]), &grads, false),
        ),
    ];
    let mut checked = 0;
    for (name, (shape, grad)) in checks {
        let reference = &expected[&format!("train_step.grad.mask_decoder.{name}")];
        assert_eq!(shape, reference.shape, "{name}: shape");
        let err = relative_error(&grad, &reference.values);
        assert!(err < 1e-4, "{name}: gradient relative error {err:e}");
        checked += 1;
    }
    assert_eq!(
        checked,
        expected
            .keys()
            .filter(|k| k.starts_with("train_step.grad."))
            .count()
    );
}

/// A parameter's gradient as `(shape, values)`, optionally transposed (rank 2).
fn grad_of<const D: usize>(
    param: &burn::module::Param<Tensor<D>>,
    grads: &burn::tensor::Gradients,
    transpose: bool,
) -> (Vec<usize>, Vec<f32>) {
    let grad = param
        .val()
        .grad(grads)
        .expect("a trained parameter has a gradient");
    let grad = if transpose {
        grad.swap_dims(0, 1)
    } else {
        grad
    };
    (grad.dims().to_vec(), values(&grad))
}
