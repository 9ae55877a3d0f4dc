#!/usr/bin/env python3
"""Checks `samtune annotate` output with pycocotools: every segmentation decodes, its
area and box agree with the record, and the whole file loads as a COCO dataset.

    python tests/reference/check_annotations.py OUT/annotations.json IMAGE_DIR
"""

import json
import os
import sys

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO


def main():
    path, image_dir = sys.argv[1], sys.argv[2]
    coco = COCO(path)
    with open(path) as f:
        data = json.load(f)
    assert data["annotations"], "no masks to check"
    images = {i["id"]: i for i in data["images"]}
    for ann in data["annotations"]:
        info = images[ann["image_id"]]
        w, h = Image.open(os.path.join(image_dir, info["file_name"])).size
        assert (info["width"], info["height"]) == (w, h), info
        mask = mask_utils.decode(ann["segmentation"])
        assert mask.shape == (h, w), (mask.shape, h, w)
        assert int(mask.sum()) == ann["area"] == int(mask_utils.area(ann["segmentation"])), ann["id"]
        ys, xs = np.nonzero(mask)
        # the official box: x0, y0 and the inclusive extent (x1 - x0, y1 - y0)
        box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())]
        assert box == ann["bbox"], (box, ann["bbox"])
        assert (coco.annToMask(ann) == mask).all()
    print(f"{len(data['annotations'])} masks in {len(images)} images decode with pycocotools and agree")


if __name__ == "__main__":
    main()
