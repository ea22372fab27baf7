"""A port of the VisDrone2019-DET toolkit's evaluation (MATLAB) to NumPy, rule for rule.

Source: github.com/VisDrone/VisDrone2018-DET-toolkit at commit 005445782213e20cb91bc50a597db3dd949e749a (2019-04-28,
the repository's latest), files `evalDET.m`, `utils/saveAnnoRes.m`, `utils/dropObjectsInIgr.m`,
`utils/createIntImg.m`, `utils/calcAccuracy.m`, `utils/evalRes.m`, `utils/compOas.m` and `utils/VOCap.m`. What each
function below copies is named in its docstring. In order:

1. `saveAnnoRes` -> `dropObjectsInIgr`, per image, before anything else: ground truth and detections whose share
   inside the image's ignored regions is >= 0.5 are dropped. The share is read off a pixel integral image of the
   regions (1-based, clamped, inclusive fills) at the box's rounded corners.
2. `calcAccuracy`: for each class, IoU threshold 0.50:0.05:0.95 and maxDets 1/10/100/500, the first maxDets rows of each
   image's (remaining) detections in file order, across classes, are matched per image by `evalRes` (highest score
   first, each ground truth once, the best IoU >= threshold, ties to the later ground truth). AP is `VOCap`
   (all-point interpolated VOC AP) at maxDets 500; AR is the recall reached.
3. The summary means are `mean2` over `AP(evalClass, :)`, where `evalClass` lists a class once for every image that
   holds ground truth of it: a class weighs by the number of its images, as in the toolkit.

Ground-truth rows with score 0 in categories 1-10 (the toolkit's "ignore" objects) do not occur in the VisDrone
val annotations (every object of categories 1-10 there has score 1), and YOLO labels cannot carry them, so `evalRes`'s
ignore branch has nothing to do here and is not ported.
"""

from __future__ import annotations

import numpy as np

__all__ = ("TOOLKIT_COMMIT", "evaluate_toolkit", "keep_outside_ignored", "match_class")

TOOLKIT_COMMIT = "005445782213e20cb91bc50a597db3dd949e749a"  # VisDrone/VisDrone2018-DET-toolkit
MAX_DETS = (1, 10, 100, 500)
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # 0.5:0.05:0.95


def _matlab_round(x):
    """MATLAB `round`: halves away from zero (NumPy rounds halves to even)."""
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def keep_outside_ignored(boxes: np.ndarray, regions: np.ndarray, height: int, width: int) -> np.ndarray:
    """`dropObjectsInIgr.m`: which boxes stay, given the image's ignored regions.

    Args:
        boxes (array-like): (N, 4) pixel boxes `left, top, width, height` (ground truth or detections).
        regions (array-like): (M, 4) ignored regions, same format (integers in VisDrone annotations).
        height (int): Image height in pixels.
        width (int): Image width in pixels.

    Returns:
        (np.ndarray): (N,) bool, False for a box whose share inside the regions is >= 0.5.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(regions) == 0:
        return np.ones(len(boxes), bool)
    ignored = np.zeros((height, width), np.int64)
    for x, y, w, h in np.maximum(1, _matlab_round(regions)).astype(np.int64):  # igrRegion = max(1, gt(idxIgr, 1:4))
        ignored[y - 1 : min(height, y + h), x - 1 : min(width, x + w)] = 1  # 1-based, both ends inclusive
    integral = ignored.cumsum(0).cumsum(1)  # createIntImg
    pos = np.maximum(1, _matlab_round(boxes)).astype(np.int64)
    x, y = np.clip(pos[:, 0], 1, width), np.clip(pos[:, 1], 1, height)
    w, h = pos[:, 2], pos[:, 3]
    right, bottom = np.minimum(width, x + w), np.clip(y + h, 1, height)

    def at(row, col):  # intIgrMap(row, col), 1-based
        return integral[row - 1, col - 1]

    inside = at(y, x) + at(bottom, right) - at(y, right) - at(bottom, x)
    return inside / (h * w) < 0.5


def _overlaps(dt, gt):
    """`compOas.m` without ignore flags: IoU of (D, 4) and (G, 4) `x, y, w, h` boxes, 0 where they do not overlap."""
    w = np.minimum(dt[:, None, 0] + dt[:, None, 2], gt[None, :, 0] + gt[None, :, 2]) - np.maximum(dt[:, None, 0], gt[None, :, 0])
    h = np.minimum(dt[:, None, 1] + dt[:, None, 3], gt[None, :, 1] + gt[None, :, 3]) - np.maximum(dt[:, None, 1], gt[None, :, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    union = (dt[:, 2] * dt[:, 3])[:, None] + (gt[:, 2] * gt[:, 3])[None, :] - inter
    return np.where(inter > 0, inter / np.where(inter > 0, union, 1.0), 0.0)


def _match(oa, thr):
    """`evalRes.m`: detections (rows of `oa`, highest score first) matched greedily to ground truth (columns).

    A detection takes, among the ground truth not matched yet with IoU >= `thr`, the one of highest IoU; of equal
    ones the last (`evalRes` replaces its best on `oa >= bstOa`). Returns (D,) int8, 1 = true positive, 0 = false.
    """
    flags = np.zeros(len(oa), np.int8)
    if not oa.size:
        return flags
    free = np.ones(oa.shape[1], bool)
    for d in np.flatnonzero((oa >= thr).any(1)):  # the others cannot match anything
        candidates = np.where(free & (oa[d] >= thr), oa[d], -1.0)
        best = candidates.max()
        if best >= 0:
            g = len(candidates) - 1 - int(np.argmax(candidates[::-1] == best))
            free[g], flags[d] = False, 1
    return flags


def _voc_ap(rec, prec):
    """`VOCap.m`: all-point interpolated average precision."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def match_class(images: list, cls: int) -> list:
    """`calcAccuracy.m`'s per-image matching (`evalRes`) of one class, at every IoU threshold and maxDets.

    Args:
        images (list[dict]): As for `evaluate_toolkit`.
        cls: The class id.

    Returns:
        (list[tuple]): Per image, in order: `n_gt` (int, its ground truth of `cls`), `scores` (D,) of its detections
            of `cls` among its first 500 rows, highest first (ties in file order), and `flags` (T, Y, D) int8 for the
            IoU thresholds x maxDets: 1 true positive, 0 false positive, -1 not among the first maxDets rows.
    """
    matches = []
    for image in images:
        gt = image["gt_boxes"][image["gt_classes"] == cls]
        first = np.flatnonzero(image["classes"][:MAX_DETS[-1]] == cls)  # first 500 rows, then this class
        order = first[np.argsort(-image["scores"][first], kind="stable")]  # evalRes: highest score first
        oa = _overlaps(image["boxes"][order], gt)
        flags = np.full((len(IOU_THRESHOLDS), len(MAX_DETS), len(order)), -1, np.int8)
        for t, thr in enumerate(IOU_THRESHOLDS):
            full = _match(oa, thr)
            for y, max_dets in enumerate(MAX_DETS):
                kept = order < max_dets  # rows of the file among its first max_dets
                if kept.all() or not kept[kept.argmin():].any():  # a prefix: greedy matching of a prefix is a prefix
                    flags[t, y, kept] = full[: kept.sum()]
                else:
                    flags[t, y, kept] = _match(oa[kept], thr)
        matches.append((len(gt), image["scores"][order], flags))
    return matches


def evaluate_toolkit(images: list, classes: list[int]) -> dict:
    """`calcAccuracy.m` over images already passed through `keep_outside_ignored` (`saveAnnoRes.m`).

    Args:
        images (list[dict]): Per image, in the toolkit's image order: `gt_boxes` (G, 4) and `gt_classes` (G,), and
            `boxes` (D, 4), `scores` (D,), `classes` (D,) of its detections in result-file order. Boxes are pixel
            `left, top, width, height`.
        classes (list): The class ids to evaluate (the toolkit's 1..10).

    Returns:
        (dict): `AP`, `AP50`, `AP75`, `AR1`, `AR10`, `AR100`, `AR500` in [0, 1] (None when no class has ground
            truth), and `per_class` {class id: AP over the 10 thresholds, None without ground truth}.
    """
    n_cls, n_thr = len(classes), len(IOU_THRESHOLDS)
    ap, ar = np.zeros((n_cls, n_thr)), np.zeros((n_cls, n_thr, len(MAX_DETS)))
    weight = np.zeros(n_cls)  # images holding the class: how often evalClass lists it
    for k, cls in enumerate(classes):
        matches = match_class(images, cls)
        n_gt = sum(m[0] for m in matches)
        weight[k] = sum(m[0] > 0 for m in matches)
        scores = np.concatenate([m[1] for m in matches])
        rank = np.argsort(-scores, kind="stable")  # the last maxDets (500): the AP's detections
        for t in range(n_thr):
            for y in range(len(MAX_DETS)):
                flags = np.concatenate([m[2][t, y] for m in matches])
                flags = flags[flags >= 0]
                if len(flags):
                    ar[k, t, y] = flags.sum() / max(1, n_gt)  # max(rec): tp grows with rank
            flags = np.concatenate([m[2][t, -1] for m in matches])[rank]
            tp, fp = np.cumsum(flags == 1), np.cumsum(flags == 0)
            ap[k, t] = _voc_ap(tp / max(1, n_gt), tp / np.maximum(1, tp + fp))

    def mean2(values):  # mean2(AP(evalClass, :)): evalClass holds each class once per image with it
        rows = np.repeat(values, weight.astype(int), axis=0)
        return float(rows.mean()) if rows.size else None

    metrics = {"AP": mean2(ap), "AP50": mean2(ap[:, :1]), "AP75": mean2(ap[:, 5:6])}
    metrics.update({f"AR{m}": mean2(ar[:, :, y]) for y, m in enumerate(MAX_DETS)})
    metrics["per_class"] = {cls: float(ap[k].mean()) if weight[k] else None for k, cls in enumerate(classes)}
    return metrics
