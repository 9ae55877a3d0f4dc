"""samtune's training loss in PyTorch (src/train/loss.rs): sigmoid focal (alpha 0.25,
gamma 2, mean over pixels) x20 + dice (smooth 1) x1 on the best of the candidate masks,
plus the MSE between the predicted and the actual IoU of that mask. Shared by the fixture
script and the benchmark reference."""

import torch
import torch.nn.functional as F


def sam_loss(masks, iou_pred, targets, focal_weight=20.0, dice_weight=1.0, iou_weight=1.0):
    t = targets.expand_as(masks)
    p = torch.sigmoid(masks)
    ce = F.binary_cross_entropy_with_logits(masks, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    focal = ((0.25 * t + 0.75 * (1 - t)) * ce * (1 - p_t) ** 2).flatten(2).mean(-1)
    inter = (p * t).flatten(2).sum(-1)
    dice = 1 - (2 * inter + 1) / (p.flatten(2).sum(-1) + t.flatten(2).sum(-1) + 1)
    with torch.no_grad():
        pred = (masks > 0).float()
        i = (pred * t).flatten(2).sum(-1)
        u = (pred + t).clamp(max=1).flatten(2).sum(-1)
        actual = torch.where(u > 0, i / u.clamp(min=1), torch.ones_like(u))
        best = (focal_weight * focal + dice_weight * dice).argmin(1, keepdim=True)
    pick = lambda x: x.gather(1, best).squeeze(1)
    iou_mse = (pick(iou_pred) - pick(actual)) ** 2
    total = focal_weight * pick(focal) + dice_weight * pick(dice) + iou_weight * iou_mse
    return total.mean()
