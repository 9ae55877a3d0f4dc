#!/usr/bin/env python3
"""COCO fixtures for samtune's dataset tests: a small instance-annotation file with
polygons (several per object), uncompressed RLE (`iscrowd`), compressed RLE, two
categories and a tiny object, plus the masks `pycocotools` decodes for each annotation.

    python tests/reference/make_coco_fixtures.py --out tests/fixtures/coco
"""

import argparse
import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from safetensors.numpy import save_file


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    rng = np.random.default_rng(7)
    h, w = 48, 64
    images, annotations = [], []
    for image_id, name in [(1, "a.png"), (2, "b.png")]:
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(os.path.join(args.out, "images", name))
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})

    def add(image_id, category_id, segmentation, iscrowd=0):
        annotations.append({
            "id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
            "segmentation": segmentation, "iscrowd": iscrowd, "area": 0, "bbox": [0, 0, 0, 0],
        })

    # polygons: a triangle with fractional vertices, and an object made of two polygons
    add(1, 1, [[3.2, 4.7, 30.6, 8.1, 12.4, 35.9]])
    add(1, 2, [[40, 5, 60, 5, 60, 20, 40, 20], [45.5, 25.5, 58.2, 30.1, 50.3, 44.8]])
    # a tiny object (below a min_area of 16 pixels)
    add(2, 1, [[10, 10, 12, 10, 12, 12, 10, 12]])
    # uncompressed RLE, as crowd annotations come
    blob = np.zeros((h, w), dtype=np.uint8, order="F")
    blob[20:40, 5:30] = 1
    blob[25:30, 10:20] = 0
    rle = mask_utils.encode(np.asfortranarray(blob))
    uncompressed = {"size": [h, w], "counts": rle_counts(blob)}
    add(2, 2, uncompressed, iscrowd=1)
    # compressed RLE
    disc = ((np.mgrid[0:h, 0:w][0] - 12) ** 2 + (np.mgrid[0:h, 0:w][1] - 48) ** 2 < 81).astype(np.uint8)
    compressed = mask_utils.encode(np.asfortranarray(disc))
    add(2, 1, {"size": [h, w], "counts": compressed["counts"].decode("ascii")})
    assert rle["size"] == [h, w]

    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "nucleus"}],
    }
    path = os.path.join(args.out, "annotations.json")
    with open(path, "w") as f:
        json.dump(coco, f, indent=1)

    api = COCO(path)
    masks = {}
    for ann in api.loadAnns(api.getAnnIds()):
        # C order: safetensors writes the raw buffer, and pycocotools returns Fortran arrays
        masks[f"ann{ann['id']}"] = np.ascontiguousarray(api.annToMask(ann), dtype=np.uint8)
    save_file(masks, os.path.join(args.out, "expected_masks.safetensors"))


def rle_counts(mask):
    """Uncompressed COCO counts: column-major runs, starting with zeros."""
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            run, current = 0, v
        run += 1
    counts.append(run)
    return counts


if __name__ == "__main__":
    main()
