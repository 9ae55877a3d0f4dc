#!/usr/bin/env python3
"""Checks a semantic samtune checkpoint with the official package (run by .ci/run): the
official loader refuses it strictly, naming only the semantic head's keys; without
`strict` it loads everything else (nothing missing), and that model's promptable masks
are the ones `samtune predict` gives with the same checkpoint (`--save-logits` output).

    python tests/reference/check_semantic.py CHECKPOINT PREDICT_DIR IMAGE x0,y0,x1,y1
"""

import sys

import safetensors.torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from make_fixtures import build_tiny  # noqa: E402
from check_training_outputs import box_logits_error  # noqa: E402


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
    err = box_logits_error(sam, predict_dir, image_path, box)
    print(
        f"official loader: strict load refused ({len(head)} semantic-head keys), "
        f"strict=False loads the rest; promptable logits relative error {err:.2e}"
    )


if __name__ == "__main__":
    main()
