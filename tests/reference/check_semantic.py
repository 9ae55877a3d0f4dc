#!/usr/bin/env python3
"""Checks a semantic samtune checkpoint with the official package (run by .ci/run): the
official loader refuses it strictly, naming only the semantic head's keys; without
`strict` it loads everything else (nothing missing), and that model's promptable masks
are the ones `samtune predict` gives with the same checkpoint (`--save-logits` output).

    python tests/reference/check_semantic.py CHECKPOINT PREDICT_DIR IMAGE x0,y0,x1,y1
"""

import sys

import numpy as np
import safetensors.torch
from PIL import Image
from safetensors.numpy import load_file

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from make_fixtures import build_tiny  # noqa: E402
from segment_anything import SamPredictor  # noqa: E402


def main():
    checkpoint, predict_dir, image_path, box = sys.argv[1:5]
    state = safetensors.torch.load_file(checkpoint)
    head = sorted(k for k in state if k.startswith("mask_decoder.semantic."))
    assert head, "no semantic head in the checkpoint"
    sam = build_tiny()
    try:
        sam.load_state_dict(state, strict=True)
        raise AssertionError("the official loader accepted the semantic head strictly")
    except RuntimeError as e:
        assert "mask_decoder.semantic." in str(e), e
    result = sam.load_state_dict(state, strict=False)
    assert not result.missing_keys, f"missing: {result.missing_keys}"
    assert sorted(result.unexpected_keys) == head, result.unexpected_keys
    predictor = SamPredictor(sam)
    predictor.set_image(np.array(Image.open(image_path).convert("RGB")))
    b = np.array([float(v) for v in box.split(",")])
    _, iou, low_res = predictor.predict(box=b, multimask_output=False, return_logits=True)
    ours = load_file(f"{predict_dir}/logits.safetensors")
    err = np.abs(ours["low_res_logits"] - low_res).max() / np.abs(low_res).max()
    assert err < 1e-4, f"promptable logits differ from the official model: relative error {err}"
    assert np.abs(ours["iou_predictions"] - iou).max() < 1e-4
    print(
        f"official loader: strict load refused ({len(head)} semantic-head keys), "
        f"strict=False loads the rest; promptable logits relative error {err:.2e}"
    )


if __name__ == "__main__":
    main()
