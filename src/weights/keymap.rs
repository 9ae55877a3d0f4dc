//! Official state_dict key <-> samtune module path.
//!
//! Module paths equal the official keys except where the official model uses
//! `nn.Sequential` (numeric, gapped indexes that cannot be Rust field names).

/// (official prefix, samtune prefix)
const SEQUENTIAL_RENAMES: &[(&str, &str)] = &[
    ("image_encoder.neck.0.", "image_encoder.neck.conv1."),
    ("image_encoder.neck.1.", "image_encoder.neck.ln1."),
    ("image_encoder.neck.2.", "image_encoder.neck.conv2."),
    ("image_encoder.neck.3.", "image_encoder.neck.ln2."),
    (
        "prompt_encoder.mask_downscaling.0.",
        "prompt_encoder.mask_downscaling.conv1.",
    ),
    (
        "prompt_encoder.mask_downscaling.1.",
        "prompt_encoder.mask_downscaling.ln1.",
    ),
    (
        "prompt_encoder.mask_downscaling.3.",
        "prompt_encoder.mask_downscaling.conv2.",
    ),
    (
        "prompt_encoder.mask_downscaling.4.",
        "prompt_encoder.mask_downscaling.ln2.",
    ),
    (
        "prompt_encoder.mask_downscaling.6.",
        "prompt_encoder.mask_downscaling.conv3.",
    ),
    (
        "mask_decoder.output_upscaling.0.",
        "mask_decoder.output_upscaling.conv1.",
    ),
    (
        "mask_decoder.output_upscaling.1.",
        "mask_decoder.output_upscaling.ln1.",
    ),
    (
        "mask_decoder.output_upscaling.3.",
        "mask_decoder.output_upscaling.conv2.",
    ),
];

/// `image_encoder.neck.0.weight` -> `image_encoder.neck.conv1.weight`.
pub fn official_to_module(key: &str) -> String {
    rename(key, SEQUENTIAL_RENAMES.iter().map(|(o, m)| (*o, *m)))
}

/// `image_encoder.neck.conv1.weight` -> `image_encoder.neck.0.weight`.
pub fn module_to_official(path: &str) -> String {
    rename(path, SEQUENTIAL_RENAMES.iter().map(|(o, m)| (*m, *o)))
}

fn rename<'a>(key: &str, mut pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .find_map(|(from, to)| key.strip_prefix(from).map(|rest| format!("{to}{rest}")))
        .unwrap_or_else(|| key.to_string())
}

/// Tensors of the official state_dict that are buffers, not parameters: saved and
/// loaded, but not counted by `sum(p.numel() for p in model.parameters())`.
pub const BUFFERS: &[&str] = &["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_indexes_round_trip() {
        for (official, module) in [
            (
                "image_encoder.neck.2.weight",
                "image_encoder.neck.conv2.weight",
            ),
            (
                "prompt_encoder.mask_downscaling.6.bias",
                "prompt_encoder.mask_downscaling.conv3.bias",
            ),
            (
                "mask_decoder.output_upscaling.1.weight",
                "mask_decoder.output_upscaling.ln1.weight",
            ),
        ] {
            assert_eq!(official_to_module(official), module);
            assert_eq!(module_to_official(module), official);
        }
    }

    #[test]
    fn other_keys_are_unchanged() {
        for key in [
            "image_encoder.blocks.0.attn.rel_pos_h",
            "mask_decoder.output_hypernetworks_mlps.3.layers.2.bias",
            // a prefix match must stop at the dot: `neck.10` is not `neck.1`
            "image_encoder.neck.10.weight",
        ] {
            assert_eq!(official_to_module(key), key);
            assert_eq!(module_to_official(key), key);
        }
    }
}
