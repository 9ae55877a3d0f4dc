#!/usr/bin/env python3
"""Checks a samtune training run with the official tools (run by .ci/run):

1. the official PyTorch model loads `checkpoints/last.safetensors` with `strict=True`
   (official key names, nothing missing or extra) and predicts the same low-res logits
   and IoUs as `samtune predict` did with it (`--save-logits` output);
2. TensorBoard's own reader reads the run's event files (scalars and images).

    python tests/reference/check_training_outputs.py RUN_DIR PREDICT_DIR IMAGE x0,y0,x1,y1
"""

import glob
import json
import sys

import numpy as np
import safetensors.torch
import torch
from PIL import Image
from safetensors.numpy import load_file

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from make_fixtures import build_tiny  # noqa: E402
from segment_anything import SamPredictor  # noqa: E402


def box_logits_error(sam, predict_dir, image_path, box):
    """The official `sam`'s single-mask prediction for `box` ("x0,y0,x1,y1") on the image
    against `samtune predict --save-logits` in `predict_dir`: the low-res logits' largest
    difference relative to their largest value (asserted < 1e-4, IoUs within 1e-4)."""
    predictor = SamPredictor(sam)
    predictor.set_image(np.array(Image.open(image_path).convert("RGB")))
    b = np.array([float(v) for v in box.split(",")])
    _, iou, low_res = predictor.predict(box=b, multimask_output=False, return_logits=True)
    ours = load_file(f"{predict_dir}/logits.safetensors")
    err = np.abs(ours["low_res_logits"] - low_res).max() / np.abs(low_res).max()
    assert err < 1e-4, f"low-res logits differ from the official model: relative error {err}"
    assert np.abs(ours["iou_predictions"] - iou).max() < 1e-4
    return err


def main():
    run_dir, predict_dir, image_path, box = sys.argv[1:5]
    sam = build_tiny()
    state = safetensors.torch.load_file(f"{run_dir}/checkpoints/last.safetensors")
    sam.load_state_dict(state, strict=True)
    err = box_logits_error(sam, predict_dir, image_path, box)
    report = json.load(open(f"{predict_dir}/prediction.json"))
    mask = np.array(Image.open(f"{predict_dir}/{report['masks'][0]['file']}")) > 0
    print(f"official model loads last.safetensors strictly; logits relative error {err:.2e}; mask area {mask.sum()}")

    # `samtune export --to pth` of the same checkpoint: torch.load's safe unpickler and a
    # strict load into the official model, with the same weights
    exported = torch.load(f"{run_dir}/checkpoints/last.pth", weights_only=True)
    build_tiny().load_state_dict(exported, strict=True)
    assert all(torch.equal(exported[k], state[k]) for k in state)
    print("official loader reads the exported last.pth (weights_only=True, strict)")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = glob.glob(f"{run_dir}/tensorboard/events.out.tfevents.*")
    assert events, "no event files"
    acc = EventAccumulator(f"{run_dir}/tensorboard", size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ["train/loss", "train/lr", "val/miou", "val/dice"]:
        assert tag in tags["scalars"], f"{tag} missing from {tags['scalars']}"
    assert tags["images"], "no overlay images"
    losses = [e.value for e in acc.Scalars("train/loss")]
    print(f"TensorBoard reads {len(losses)} loss points, {len(tags['images'])} image tags")


if __name__ == "__main__":
    main()
