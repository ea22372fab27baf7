"""Compare an exported model's outputs with its PyTorch checkpoint's: raw head outputs, and boxes after NMS.

The raw output of a YOLO detection head is (B, 4 + nc, anchors): box coordinates in input pixels, then class
probabilities. The two kinds of rows have different ranges, so each gets its own error: box rows as a fraction of the
input size, score rows as absolute probability (already on a 0-1 scale). `raw_error` is the larger of the two.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ("head_output", "load_images", "match_boxes", "raw_error")


def load_images(paths: list[str], imgsz: int) -> torch.Tensor:
    """Letterbox image files to `imgsz` (int or (h, w)) as a float32 (B, 3, H, W) RGB tensor in [0, 1].

    Uses Ultralytics' `LetterBox` with the padding and scale-up its predictor applies to fixed-size exports.

    Args:
        paths (list[str | Path]): Image files (anything OpenCV reads).
        imgsz (int | tuple[int, int]): Network input size.

    Returns:
        (torch.Tensor): Batch of shape (len(paths), 3, H, W).

    Raises:
        FileNotFoundError: If OpenCV cannot read a file.

    Example:
        >>> load_images(["bus.jpg"], 64).shape
        torch.Size([1, 3, 64, 64])
    """
    import cv2
    from ultralytics.data.augment import LetterBox

    size = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
    letterbox = LetterBox(size, auto=False, stride=32)
    batch = []
    for path in paths:
        image = cv2.imread(str(path))
        if image is None:
            raise FileNotFoundError(f"{path}: not an image OpenCV can read")
        batch.append(letterbox(image=image)[..., ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
    return torch.from_numpy(np.ascontiguousarray(np.stack(batch))).float() / 255


def head_output(y: torch.Tensor | list | tuple) -> torch.Tensor:
    """Return the (B, 4 + nc, anchors) prediction tensor from what a model or backend returns."""
    while isinstance(y, (list, tuple)):
        y = y[0]
    return torch.as_tensor(y).float()


def raw_error(out: torch.Tensor, ref: torch.Tensor, imgsz: int) -> dict:
    """Max error of raw head output `out` against `ref`, both (B, 4 + nc, anchors).

    Args:
        out (torch.Tensor): Exported model's output.
        ref (torch.Tensor): PyTorch model's output.
        imgsz (int | tuple[int, int]): Input size the box rows are measured in.

    Returns:
        (dict): `box` (max |diff| of the box rows / max(imgsz)), `score` (max |diff| of the class probabilities)
        and `raw` (the larger).

    Raises:
        ValueError: If the shapes differ.
    """
    if out.shape != ref.shape:
        raise ValueError(f"output shape {tuple(out.shape)} != PyTorch's {tuple(ref.shape)}")
    diff = (out.double() - ref.double()).abs()
    box = diff[:, :4].max().item() / max(np.atleast_1d(imgsz))
    score = diff[:, 4:].max().item()
    return {"box": box, "score": score, "raw": max(box, score)}


def match_boxes(out: torch.Tensor, ref: torch.Tensor, conf: float = 0.25, iou: float = 0.7, min_iou: float = 0.99,
                margin: float = 0.01) -> dict:
    """Run Ultralytics' NMS on both raw outputs and check that every confident box has a twin in the other set.

    A box's twin is a same-class box of the other set with IoU > `min_iou`. A box without one is excused when
    (a) its score is below `conf + margin` (a score one rounding step away may fall under the threshold), or (b) the
    other model predicts the same box at the same anchor (IoU > `min_iou`) with a score for its class within
    `margin`, and only NMS dropped it or another class won by a hair: overlapping boxes of near-equal score are kept
    in whichever order rounding sorts them, which happens for untrained models with many look-alike boxes. Those are
    counted as `flips`.

    Args:
        out (torch.Tensor): Exported model's raw output (B, 4 + nc, anchors).
        ref (torch.Tensor): PyTorch model's raw output.
        conf (float): NMS confidence threshold.
        iou (float): NMS IoU threshold.
        min_iou (float): IoU a box and its twin must exceed.
        margin (float): Score tolerance of the two excuses.

    Returns:
        (dict): `boxes` (PyTorch's detections over the batch), `matched` (those with a twin), `flips` (boxes on either
        side excused by (b)), `unmatched` (boxes on either side without a twin or an excuse).

    Example:
        >>> y = torch.rand(1, 84, 8400) * 100
        >>> match_boxes(y, y)["unmatched"]
        0
    """
    from ultralytics.utils.metrics import box_iou
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import xywh2xyxy

    def nms(y):  # no time limit: Ultralytics' default cuts NMS short on a busy CPU, which would make the sets differ
        return non_max_suppression(y.float().clone(), conf, iou, max_time_img=1e3, return_idxs=True)

    (dets_out, keep_out), (dets_ref, keep_ref) = nms(out), nms(ref)
    totals = {"boxes": 0, "matched": 0, "flips": 0, "unmatched": 0}
    for i in range(len(ref)):
        totals["boxes"] += len(dets_ref[i])
        sides = ((dets_ref[i], keep_ref[i], dets_out[i], out[i]), (dets_out[i], keep_out[i], dets_ref[i], ref[i]))
        for src, keep, dst, other in sides:
            if not len(src):
                continue
            same = src[:, 5:6] == dst[:, 5].view(1, -1)
            has_twin = (box_iou(src[:, :4], dst[:, :4]) * same > min_iou).any(1)
            at_anchor = other[:, keep.long()].T.float()  # the other model's prediction at each kept anchor
            score = at_anchor[:, 4:].gather(1, src[:, 5:6].long()).view(-1)  # ... for this box's class
            same_box = box_iou(src[:, :4], xywh2xyxy(at_anchor[:, :4])).diagonal() > min_iou
            flip = ~has_twin & same_box & ((score - src[:, 4]).abs() < margin)
            excused = flip | (src[:, 4] < conf + margin)
            totals["flips"] += int(flip.sum())
            totals["unmatched"] += int((~has_twin & ~excused).sum())
            if src is dets_ref[i]:
                totals["matched"] += int(has_twin.sum())
    return totals
