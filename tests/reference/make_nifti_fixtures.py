#!/usr/bin/env python3
"""NIfTI volumes written by nibabel, and the values nibabel reads back from them, for
samtune's NIfTI reader test: several voxel types, intensity scaling (scl_slope/inter),
gzip or not, big-endian, NIfTI-2, anisotropic spacing, a 4D file.

    python tests/reference/make_nifti_fixtures.py --out tests/fixtures/nifti
"""

import argparse
import json
import os

import nibabel as nib
import numpy as np


def cases(rng):
    shape = (5, 4, 3)
    ct = rng.integers(-1024, 2000, size=shape).astype(np.float64)
    yield "ct_int16_scaled.nii.gz", nib.Nifti1Image, ct, np.int16, (1.0, -1024.0), (0.7, 0.7, 2.5), "<"
    yield "mr_float32.nii", nib.Nifti1Image, rng.normal(300, 80, size=shape), np.float32, None, (1.0, 1.2, 1.5), "<"
    yield "labels_uint8.nii.gz", nib.Nifti1Image, rng.integers(0, 4, size=shape).astype(np.float64), np.uint8, None, (0.8, 0.8, 3.0), "<"
    yield "big_endian_int32.nii", nib.Nifti1Image, rng.integers(-5000, 5000, size=shape).astype(np.float64), np.int32, None, (2.0, 2.0, 2.0), ">"
    yield "uint16_scaled.nii.gz", nib.Nifti1Image, rng.integers(0, 3000, size=shape).astype(np.float64), np.uint16, (0.5, 10.0), (1.0, 1.0, 1.0), "<"
    yield "nifti2_float64.nii.gz", nib.Nifti2Image, rng.normal(0, 1, size=shape), np.float64, None, (0.5, 0.6, 0.7), "<"
    yield "four_d_int16.nii.gz", nib.Nifti1Image, rng.integers(-100, 100, size=shape + (2,)).astype(np.float64), np.int16, None, (1.0, 1.0, 2.0, 3.0), "<"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(0)
    expected = {}
    for name, kind, values, dtype, scaling, zooms, endian in cases(rng):
        header = kind.header_class(endianness=endian)
        header.set_data_dtype(dtype)
        if scaling is not None:
            slope, inter = scaling
            stored = np.round((values - inter) / slope)
        else:
            slope, inter = None, None
            stored = values
        image = kind(stored.astype(dtype), np.diag([*zooms[:3], 1.0]), header=header)
        if scaling is not None:
            image.header.set_slope_inter(slope, inter)
        image.header.set_zooms(zooms)
        path = os.path.join(args.out, name)
        nib.save(image, path)
        back = nib.load(path)
        data = np.asanyarray(back.get_fdata())
        if data.ndim == 4:
            data = data[..., 0]  # samtune reads the first frame
        expected[name] = {
            "dims": list(data.shape),
            "spacing": [float(z) for z in back.header.get_zooms()[:3]],
            # x fastest, as stored
            "values": [float(v) for v in data.flatten(order="F")],
        }
    with open(os.path.join(args.out, "expected.json"), "w") as f:
        json.dump(expected, f)


if __name__ == "__main__":
    main()
