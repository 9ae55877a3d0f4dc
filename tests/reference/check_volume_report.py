#!/usr/bin/env python3
"""Scores the label volumes `samtune eval-volumes` wrote with MONAI (`compute_dice`,
`compute_surface_dice`) against the ground truth, and checks that the report says the
same: what is reported is what is written.

    python tests/reference/check_volume_report.py EVAL_OUT DATA_DIR

EVAL_OUT holds report.json and predictions/*.nii.gz; DATA_DIR the labels/ volumes (its
val/ part when it has one, as eval-volumes reads it).
"""

import json
import os
import sys
import warnings

import nibabel as nib
import numpy as np
import torch
from monai.metrics import compute_dice, compute_surface_dice


# MONAI 1.6 warns about an argument its own compute_surface_dice passes
warnings.filterwarnings("ignore", category=FutureWarning)


def one_hot(mask):
    """[1, 1, X, Y, Z] float tensor of a boolean volume."""
    return torch.from_numpy(mask.astype(np.float32))[None, None]


def main():
    out, data = sys.argv[1], sys.argv[2]
    if os.path.isdir(os.path.join(data, "val")):
        data = os.path.join(data, "val")
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    tolerance = report["tolerance_mm"]
    checked, worst_dice, worst_nsd = 0, 0.0, 0.0
    for r in report["results"]:
        prediction = nib.load(os.path.join(out, "predictions", r["volume"] + ".nii.gz"))
        labels = nib.load(os.path.join(data, "labels", r["volume"] + ".nii.gz"))
        spacing = [float(s) for s in labels.header.get_zooms()[:3]]
        pred = np.asarray(prediction.dataobj).round() == r["label"]
        truth = np.asarray(labels.dataobj).round() == r["label"]
        if not pred.any() and not truth.any():
            continue  # MONAI leaves the both-empty case undefined; samtune scores it 1
        dice = float(compute_dice(one_hot(pred), one_hot(truth), include_background=True))
        nsd = float(
            compute_surface_dice(
                one_hot(pred),
                one_hot(truth),
                class_thresholds=[tolerance],
                include_background=True,
                spacing=spacing,
            )
        )
        if not pred.any() or not truth.any():
            nsd = 0.0  # one surface is empty: nothing of either lies near the other
        worst_dice = max(worst_dice, abs(dice - r["dice"]))
        worst_nsd = max(worst_nsd, abs(nsd - r["nsd"]))
        assert abs(dice - r["dice"]) < 1e-6, (r, dice)
        assert abs(nsd - r["nsd"]) < 1e-6, (r, nsd)
        checked += 1
    assert checked > 0, "no label to check"
    print(
        f"{checked} volume labels: report = MONAI on the written predictions "
        f"(largest difference: Dice {worst_dice:.1e}, NSD {worst_nsd:.1e})"
    )


if __name__ == "__main__":
    main()
