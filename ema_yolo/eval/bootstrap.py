"""Paired bootstrap over validation images for the `coco` and `visdrone` protocols: match once, then re-weight.

A bootstrap resample of a validation set draws its images with replacement; an image drawn k times counts k times.
Matching detections to ground truth is per image, so it does not change under a resample: `match` runs the
protocol's own per-image matching once (pycocotools' `COCOeval.evaluate()`, or the VisDrone toolkit port's
`evalRes` at 500 detections per image), and `Matches.metrics(weights)` recomputes precision, recall and the summary
metrics for an integer weight per image, vectorised in NumPy, with the protocol's accumulation rules:

- `coco`: pycocotools' `COCOeval.accumulate()` and `summarize()` (pycocotools 2.0, `cocoeval.py`): per category, area
  range and maxDets, the detections of all images ranked by score (stable mergesort over the images in id order),
  true and false positive counts, recall `tp / npig`, precision `tp / (tp + fp + eps)`, its envelope, read at the 101
  recall thresholds with `searchsorted(..., side='left')` (0 past the last recall); -1 where no ground truth counts;
  the summary means leave -1 out (undefined: None here).
- `visdrone`: `calcAccuracy.m` of the VisDrone2019-DET toolkit (see `visdrone_toolkit`): AP is `VOCap` (all-point)
  over the detections at maxDets 500, AR the recall reached at maxDets 1/10/100/500, and a class weighs in the means
  by the number of images holding it.

Weight k for an image means exactly what evaluating the set with k copies of that image (new ids, side by side in
image order) gives, ties in score included: copies of one image's equally scored detections follow each other as
whole runs. `paired_bootstrap` draws the resamples and compares runs of two variants over several seeds.
"""

import numpy as np

from .protocols import COCO_KEYS, VISDRONE_KEYS, EvalError, checked_categories, coco_evaluator, visdrone_images
from .visdrone_toolkit import IOU_THRESHOLDS as TOOLKIT_IOU_THRESHOLDS
from .visdrone_toolkit import MAX_DETS as TOOLKIT_MAX_DETS
from .visdrone_toolkit import match_class

__all__ = ("CocoMatches", "Matches", "VisdroneMatches", "match", "paired_bootstrap", "resample_weights")

TP, FP, IGNORED = 1, 0, 2  # a detection's state in one segment


def _cumsum0(values):
    """[0, cumsum(values)] as int64: prefix sums, so a range sum is a difference of two entries."""
    out = np.zeros(len(values) + 1, np.int64)
    np.cumsum(values, out=out[1:])
    return out


def _suffix_max(segment, values):
    """Running maximum of `values` from each segment's end back to its start; `segment` non-decreasing.

    NumPy compares complex numbers lexicographically, so with the real part -segment a maximum never crosses into
    an earlier segment, and the result is exactly one of `values`.
    """
    key = -segment.astype(np.float64) + 1j * values
    return np.maximum.accumulate(key[::-1])[::-1].imag


class _Ranking:
    """Ranked detection lists and their true-positive events, re-counted under integer image weights.

    A list holds one category's detections of all images, concatenated in image order (each image's in its own
    order) and ranked by score with a stable sort, as both protocols rank them. A cell is a list in one area range,
    a segment a cell at one IoU threshold; segment `s = (list * A + area) * T + threshold`.

    Under weights, each true positive is an event with the weighted numbers of true positives `tp` and false
    positives `fp` ranked up to it: everything precision/recall needs, since a false or ignored detection only lowers
    precision at an unchanged recall. A run of one image's equally scored detections (a block) is repeated whole by
    a weight: where such a run holds both a true and a false positive, its events are spelled out copy by copy.

    Args:
        n_images (int): Number of images.
        lists (list[tuple]): Per list: `image` (D,) int image index, `score` (D,), `state` (A, T, D) int8 (TP, FP or
            IGNORED), `in_area` (A, D) bool (an unmatched detection in the area range is a false positive, outside
            it ignored) and `rank` (D,) each detection's rank in its image, all in concatenation order.
        n_areas (int): A.
        n_thresholds (int): T.
    """

    def __init__(self, n_images, lists, n_areas, n_thresholds):
        self.n_segments = len(lists) * n_areas * n_thresholds
        ev = {k: [] for k in ("image", "segment", "out", "cell", "cell_lo", "x", "x_lo", "t", "f", "tb", "fb", "mixed",
                              "block", "rank")}
        cell_images, x_images = [], []
        cells = xs = blocks = 0
        for lst, (image, score, state, in_area, rank) in enumerate(lists):
            order = np.argsort(-np.asarray(score, np.float64), kind="mergesort")
            image, score, rank = image[order], score[order], rank[order]
            state, in_area = state[..., order], in_area[:, order]
            new_block = np.ones(len(image), bool)
            new_block[1:] = (image[1:] != image[:-1]) | (score[1:] != score[:-1])
            block, block_start = np.cumsum(new_block) - 1, np.flatnonzero(new_block)
            shared = len(block_start) < len(image)  # some block holds more than one detection
            for a in range(n_areas):
                inside = in_area[a]
                inside_up_to = np.cumsum(inside)
                cell_images.append(image[inside])
                for t in range(n_thresholds):
                    s = (lst * n_areas + a) * n_thresholds + t
                    tp, fp = state[a, t] == TP, state[a, t] == FP
                    events = np.flatnonzero(tp)
                    x = np.flatnonzero(inside & (state[a, t] == IGNORED))  # ignored although in the area range
                    n = len(events)
                    ev["image"].append(image[events])
                    ev["rank"].append(rank[events])
                    ev["segment"].append(np.full(n, s))
                    ev["out"].append(~inside[events])  # a true positive outside the area range
                    ev["cell"].append(cells + inside_up_to[events])
                    ev["cell_lo"].append(np.full(n, cells))
                    ev["x"].append(xs + np.searchsorted(x, events, side="right"))
                    ev["x_lo"].append(np.full(n, xs))
                    ev["block"].append(blocks + block[events])
                    x_images.append(image[x])
                    xs += len(x)
                    zeros = np.zeros(n, np.int64)
                    t_in, f_in, tb, fb, mixed = zeros, zeros, zeros, zeros, np.zeros(n, bool)
                    if shared and n:
                        tp_block, fp_block = np.add.reduceat(tp, block_start), np.add.reduceat(fp, block_start)
                        b = block[events]
                        mixed = (tp_block[b] > 0) & (fp_block[b] > 0)
                        if mixed.any():
                            tp_up_to, fp_up_to = _cumsum0(tp), _cumsum0(fp)
                            start = block_start[b]
                            keep = lambda v: np.where(mixed, v, 0)  # noqa: E731
                            t_in = keep(tp_up_to[events + 1] - tp_up_to[start])  # the block's tps up to this one
                            f_in = keep(fp_up_to[events] - fp_up_to[start])  # the block's fps before it
                            tb, fb = keep(tp_block[b]), keep(fp_block[b])
                    for key, value in (("t", t_in), ("f", f_in), ("tb", tb), ("fb", fb), ("mixed", mixed)):
                        ev[key].append(value)
                cells += int(inside.sum())
            blocks += len(block_start)
        ev = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in ev.items()}
        self.image, self.segment = ev["image"].astype(np.int64), ev["segment"].astype(np.int64)
        self.rank = ev["rank"]
        self.cell, self.cell_lo = ev["cell"].astype(np.int64), ev["cell_lo"].astype(np.int64)
        self.cell_images = np.concatenate(cell_images).astype(np.int64) if cell_images else np.zeros(0, np.int64)
        bounds = np.searchsorted(self.segment, np.arange(self.n_segments + 1))
        self.segment_lo = bounds[self.segment]  # first event of each event's segment
        self.bounds = bounds
        self.out = ev["out"] if ev["out"].any() else None
        self.x_images = np.concatenate(x_images).astype(np.int64) if x_images else np.zeros(0, np.int64)
        self.x, self.x_lo = (ev["x"].astype(np.int64), ev["x_lo"].astype(np.int64)) if len(self.x_images) else (None, None)
        self.mixed = ev["mixed"].any()
        if self.mixed:  # units: a mixed block's events in one segment, or one event; a weight repeats a unit
            self.t_in, self.f_in, self.tb, self.fb = ev["t"], ev["f"], ev["tb"], ev["fb"]
            new = np.ones(len(self.image), bool)
            same = (ev["block"][1:] == ev["block"][:-1]) & (self.segment[1:] == self.segment[:-1])
            new[1:] = ~(same & ev["mixed"][1:] & ev["mixed"][:-1])
            self.unit_start = np.flatnonzero(new)
            self.unit_len = np.diff(np.append(self.unit_start, len(self.image)))
            self.unit_mixed = ev["mixed"][self.unit_start]

    def events(self, weights):
        """The true-positive events under `weights` ((N,) int64 per image), in rank order within each segment.

        Returns:
            (tuple): `segment` (E,), `tp` (E,) and `fp` (E,) int64 weighted counts ranked up to and including each
                event, and `totals` (n_segments,) the weighted true positives of each segment.
        """
        w = weights[self.image]
        tp_sum = _cumsum0(w)
        tp = tp_sum[1:] - tp_sum[self.segment_lo]
        totals = tp_sum[self.bounds[1:]] - tp_sum[self.bounds[:-1]]
        counted = _cumsum0(weights[self.cell_images])  # detections in the area range
        fp = counted[self.cell] - counted[self.cell_lo] - tp
        if self.out is not None:  # true positives outside the area range count too
            out_sum = _cumsum0(w * self.out)
            fp += out_sum[1:] - out_sum[self.segment_lo]
        if self.x is not None:  # in the range but matched to ignored ground truth: not counted
            x_sum = _cumsum0(weights[self.x_images])
            fp -= x_sum[self.x] - x_sum[self.x_lo]
        segment = self.segment
        if self.mixed:
            segment, tp, fp = self._spell_out(w, segment, tp, fp)
        return segment, tp, fp, totals

    def _spell_out(self, w, segment, tp, fp):
        """Events of mixed blocks copy by copy: copy c of a block holds its true positive i at tp = (tp before the
        block) + c * (its tps) + (its tps up to i), and likewise fp; the counts above took the copies of each
        detection side by side (tp = before + w * (tps up to i))."""
        repeat = np.where(self.unit_mixed, w[self.unit_start], 1)
        counts = self.unit_len * repeat
        unit = np.repeat(np.arange(len(counts)), counts)
        offset = np.arange(len(unit)) - np.repeat(_cumsum0(counts)[:-1], counts)
        length = self.unit_len[unit]
        e, copy = self.unit_start[unit] + offset % length, offset // length
        t_in, f_in, we = self.t_in[e], self.f_in[e], w[e]
        return (segment[e], tp[e] + (1 - we) * t_in + copy * self.tb[e],
                fp[e] + (1 - we) * f_in + copy * self.fb[e])


def _check_weights(weights, n):
    """`weights` as (n,) int64, or ValueError: a weight counts an image a whole number of times."""
    if weights is None:
        return np.ones(n, np.int64)
    weights = np.asarray(weights)
    if weights.shape != (n,) or (weights < 0).any() or (weights != np.round(weights)).any():
        raise ValueError(f"weights must be {n} non-negative integers, one per image")
    return weights.astype(np.int64)


class Matches:
    """One run's detections matched to the ground truth once, per image (`match` builds it).

    Attributes:
        protocol (str): 'coco' or 'visdrone'.
        image_ids (list): The split's image ids, in the order `weights` follow.
        keys (tuple): The summary metric names, `protocols.COCO_KEYS` or `protocols.VISDRONE_KEYS`.
    """

    protocol, keys = None, ()

    def __init__(self, image_ids):
        self.image_ids = list(image_ids)

    def metrics(self, weights=None):
        """The protocol's summary metrics with image i counted `weights[i]` times (default: once each).

        Args:
            weights (array-like, optional): (N,) non-negative integers, one per image of `image_ids`.

        Returns:
            (dict): `keys` -> float in [0, 1], or None where the protocol leaves the metric undefined.

        Raises:
            ValueError: If `weights` has the wrong length or is not non-negative integers.
        """
        raise NotImplementedError


class CocoMatches(Matches):
    """pycocotools' per-image matching (`COCOeval.evaluate()`, `evalImgs`) in arrays, for `accumulate(weights)`.

    Args:
        evaluator (pycocotools.cocoeval.COCOeval): After `evaluate()`.
        image_ids (list): The split's image ids, in `evaluator.params.imgIds` order.
    """

    protocol, keys = "coco", COCO_KEYS

    def __init__(self, evaluator, image_ids):
        super().__init__(image_ids)
        p = evaluator.params
        self.iou_thresholds, self.rec_thresholds = p.iouThrs, p.recThrs
        self.max_dets, self.area_labels = list(p.maxDets), list(p.areaRngLbl)
        n_k, n_a, n_i, n_t = len(p.catIds), len(p.areaRng), len(p.imgIds), len(p.iouThrs)
        if n_i != len(self.image_ids):
            raise ValueError("one image id per evaluated image expected")
        self.shape = (n_k, n_a, n_t)
        self.per_class = []  # per category: image, rank in image, score, state (A, T, D), in_area (A, D)
        gt_cell, gt_image, gt_count = [], [], []
        for k in range(n_k):
            parts = []
            for i in range(n_i):
                entries = [evaluator.evalImgs[(k * n_a + a) * n_i + i] for a in range(n_a)]
                if entries[0] is None:  # no ground truth and no detection of the category in the image
                    continue
                for a, e in enumerate(entries):
                    gt_cell.append(k * n_a + a), gt_image.append(i), gt_count.append(int(np.count_nonzero(e["gtIgnore"] == 0)))
                n = len(e["dtScores"])
                if not n:
                    continue
                areas = np.array([evaluator.cocoDt.anns[d]["area"] for d in entries[0]["dtIds"]], np.float64)
                state = np.empty((n_a, n_t, n), np.int8)
                in_area = np.empty((n_a, n), bool)
                for a, e in enumerate(entries):
                    matched, ignored = e["dtMatches"].astype(bool), e["dtIgnore"].astype(bool)  # as accumulate() reads them
                    state[a] = np.where(ignored, IGNORED, np.where(matched, TP, FP))
                    low, high = p.areaRng[a]
                    in_area[a] = ~((areas < low) | (areas > high))  # evaluateImg's area test
                parts.append((np.full(n, i), np.arange(n), np.asarray(e["dtScores"], np.float64), state, in_area))
            if parts:
                image, rank, score, state, in_area = (np.concatenate(v, axis=-1) for v in zip(*parts))
            else:
                image, rank, score = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
                state, in_area = np.zeros((n_a, n_t, 0), np.int8), np.zeros((n_a, 0), bool)
            self.per_class.append((image, rank, score, state, in_area))
        self.gt_cell, self.gt_image = np.array(gt_cell, np.int64), np.array(gt_image, np.int64)
        self.gt_count = np.array(gt_count, np.int64)
        self._rankings = {}
        self._ranking(self.max_dets[-1])  # what `metrics` needs; the smaller maxDets' only for `accumulate`

    def _ranking(self, max_det):
        """The `_Ranking` of the first `max_det` detections of each image and category (built once)."""
        if max_det not in self._rankings:
            lists = []
            for image, rank, score, state, in_area in self.per_class:
                top = rank < max_det
                lists.append((image[top], score[top], state[..., top], in_area[:, top], rank[top]))
            self._rankings[max_det] = _Ranking(len(self.image_ids), lists, self.shape[1], self.shape[2])
        return self._rankings[max_det]

    def accumulate(self, weights=None, max_dets=None):
        """pycocotools' `accumulate()` with image i counted `weights[i]` times.

        Args:
            weights (array-like, optional): (N,) non-negative integers (default: 1 for every image).
            max_dets (list[int], optional): The maxDets to compute precision for (default: all of
                `params.maxDets`); elsewhere `precision` is NaN. Recall is computed for all.

        Returns:
            (tuple[np.ndarray, np.ndarray]): `precision` (T, R, K, A, M) and `recall` (T, K, A, M), as
                `COCOeval.eval['precision']` and `['recall']`: -1 where no ground truth counts.
        """
        weights = _check_weights(weights, len(self.image_ids))
        n_k, n_a, n_t = self.shape
        n_r, n_m = len(self.rec_thresholds), len(self.max_dets)
        npig = np.bincount(self.gt_cell, weights[self.gt_image] * self.gt_count, minlength=n_k * n_a).astype(np.int64)
        defined = npig > 0
        precision = np.full((n_t, n_r, n_k, n_a, n_m), np.nan)
        recall = np.empty((n_t, n_k, n_a, n_m))
        largest = self._ranking(self.max_dets[-1])
        for m, max_det in enumerate(self.max_dets):
            ranking = self._ranking(max_det) if (max_dets is None or max_det in max_dets) else None
            if ranking is None:  # recall only: the true positives among each image's first max_det, counted
                kept = largest.rank < max_det
                totals = np.bincount(largest.segment[kept], weights[largest.image[kept]], minlength=largest.n_segments)
            else:
                segment, tp, fp, totals = ranking.events(weights)
                precision[..., m] = self._precision(segment, tp, fp, npig).reshape(n_k, n_a, n_t, n_r).transpose(2, 3, 0, 1)
                precision[..., m][:, :, ~defined.reshape(n_k, n_a)] = -1
            rec = totals.reshape(n_k, n_a, n_t) / np.maximum(npig, 1).reshape(n_k, n_a, 1)
            recall[..., m] = np.where(defined.reshape(n_k, n_a, 1), rec, -1).transpose(2, 0, 1)
        return precision, recall

    def _precision(self, segment, tp, fp, npig):
        """Precision at the recall thresholds per segment ((n_segments, R)), pycocotools' way."""
        n_r = len(self.rec_thresholds)
        tp, fp = tp.astype(np.float64), fp.astype(np.float64)
        rc = tp / np.maximum(npig, 1)[segment // self.shape[2]]
        pr = tp / (fp + tp + np.spacing(1))
        envelope = _suffix_max(segment, pr)
        # q[r] = envelope at the first rank with rc >= r (searchsorted 'left'), i.e. the largest precision among the
        # events with rc >= r. Bucket the events by how many thresholds they reach; the first of a bucket holds its max.
        reached = np.searchsorted(self.rec_thresholds, rc, side="right")
        key = segment * (n_r + 1) + reached
        first = np.ones(len(key), bool)
        first[1:] = key[1:] != key[:-1]
        best = np.zeros((self._n_segments, n_r + 1))
        best.reshape(-1)[key[first]] = envelope[first]
        return np.maximum.accumulate(best[:, ::-1], axis=1)[:, ::-1][:, 1:]

    @property
    def _n_segments(self):
        return int(np.prod(self.shape))

    def metrics(self, weights=None):
        precision, recall = self.accumulate(weights, max_dets=[self.max_dets[-1]])
        return coco_summary(precision, recall, self.iou_thresholds, self.area_labels, self.max_dets)


def coco_summary(precision, recall, iou_thresholds, area_labels, max_dets):
    """pycocotools' `summarize()` stats as `protocols.COCO_KEYS` -> float, None where it gives -1.

    Args:
        precision (np.ndarray): (T, R, K, A, M) as `COCOeval.eval['precision']` (only maxDets 100 is read).
        recall (np.ndarray): (T, K, A, M).
        iou_thresholds (np.ndarray): `params.iouThrs`.
        area_labels (list[str]): `params.areaRngLbl`.
        max_dets (list[int]): `params.maxDets`.
    """

    def summarize(ap, iou=None, area="all", max_det=100):  # COCOeval.summarize._summarize
        a = [i for i, label in enumerate(area_labels) if label == area]
        m = [i for i, d in enumerate(max_dets) if d == max_det]
        s = precision if ap else recall
        if iou is not None:
            s = s[np.where(iou == iou_thresholds)[0]]
        s = s[:, :, :, a, m] if ap else s[:, :, a, m]
        return float(np.mean(s[s > -1])) if (s > -1).any() else None

    stats = (summarize(1), summarize(1, 0.5), summarize(1, 0.75), summarize(1, area="small"),
             summarize(1, area="medium"), summarize(1, area="large"), summarize(0, max_det=max_dets[0]),
             summarize(0, max_det=max_dets[1]), summarize(0, max_det=max_dets[2]), summarize(0, area="small"),
             summarize(0, area="medium"), summarize(0, area="large"))
    return dict(zip(COCO_KEYS, stats))


class VisdroneMatches(Matches):
    """The VisDrone toolkit port's per-image matching (`visdrone_toolkit.match_class`) in arrays.

    Args:
        images (list[dict]): `protocols.visdrone_images` output.
        classes (list[int]): The category ids evaluated.
        image_ids (list): The split's image ids, in `images` order.
    """

    protocol, keys = "visdrone", VISDRONE_KEYS

    def __init__(self, images, classes, image_ids):
        super().__init__(image_ids)
        n_t, n_y = len(TOOLKIT_IOU_THRESHOLDS), len(TOOLKIT_MAX_DETS)
        self.n_classes = len(classes)
        lists, gt = [], np.zeros((len(classes), len(images)), np.int64)
        ar_segment, ar_image, ar_count = [], [], []
        for k, cls in enumerate(classes):
            matches = match_class(images, cls)
            gt[k] = [m[0] for m in matches]
            image = np.concatenate([np.full(len(m[1]), i) for i, m in enumerate(matches)]).astype(np.int64)
            score = np.concatenate([m[1] for m in matches])
            flags = np.concatenate([m[2] for m in matches], axis=-1)  # (T, Y, D)
            lists.append((image, score, np.where(flags[None, :, -1] == 1, TP, FP).astype(np.int8),
                          np.ones((1, len(image)), bool), np.zeros(len(image), np.int64)))
            tps = np.stack([np.bincount(image, (flags[:, y] == 1)[t], minlength=len(images))
                            for t in range(n_t) for y in range(n_y)]).astype(np.int64)  # (T * Y, N)
            seg, img = np.nonzero(tps)
            ar_segment.append(k * n_t * n_y + seg), ar_image.append(img), ar_count.append(tps[seg, img])
        self.gt = gt
        self.ar_segment, self.ar_image, self.ar_count = (np.concatenate(v) if v else np.zeros(0, np.int64)
                                                         for v in (ar_segment, ar_image, ar_count))
        self.ranking = _Ranking(len(images), lists, 1, n_t)

    def accumulate(self, weights=None):
        """`calcAccuracy.m` with image i counted `weights[i]` times.

        Args:
            weights (array-like, optional): (N,) non-negative integers (default: 1 for every image).

        Returns:
            (tuple[np.ndarray, np.ndarray, np.ndarray]): `AP` (K, T) (`VOCap` at maxDets 500), `AR` (K, T, Y)
                (recall at maxDets 1/10/100/500) and each class's weight in the means (K,): the weighted number of
                images holding it.
        """
        weights = _check_weights(weights, len(self.image_ids))
        n_k, n_t, n_y = self.n_classes, len(TOOLKIT_IOU_THRESHOLDS), len(TOOLKIT_MAX_DETS)
        n_gt = self.gt @ weights
        class_weight = (self.gt > 0) @ weights
        segment, tp, fp, _ = self.ranking.events(weights)
        rec = tp / np.maximum(1, n_gt)[segment // n_t]
        envelope = _suffix_max(segment, tp / np.maximum(1, tp + fp))
        previous = np.zeros(len(rec))
        previous[1:] = np.where(segment[1:] == segment[:-1], rec[:-1], 0.0)
        ap = np.bincount(segment, (rec - previous) * envelope, minlength=n_k * n_t).reshape(n_k, n_t)
        found = np.bincount(self.ar_segment, weights[self.ar_image] * self.ar_count, minlength=n_k * n_t * n_y)
        ar = found.reshape(n_k, n_t, n_y) / np.maximum(1, n_gt)[:, None, None]
        return ap, ar, class_weight

    def metrics(self, weights=None):
        ap, ar, class_weight = self.accumulate(weights)
        total = class_weight.sum()

        def mean2(values):  # the toolkit's mean2(AP(evalClass, :)): a class weighs by its images
            return float(class_weight @ values.mean(axis=1)) / total if total else None

        metrics = {"AP": mean2(ap), "AP50": mean2(ap[:, :1]), "AP75": mean2(ap[:, 5:6])}
        metrics.update({f"AR{m}": mean2(ar[:, :, y]) for y, m in enumerate(TOOLKIT_MAX_DETS)})
        return metrics


def match(gt, predictions, protocol="coco", source="predictions", classes=None, in_file_order=False):
    """Match `predictions` to `gt` once, per image, under the `coco` or `visdrone` protocol.

    Arguments as for `protocols.evaluate`, whose summary metrics `match(...).metrics()` reproduces.

    Returns:
        (Matches): `CocoMatches` or `VisdroneMatches`.

    Raises:
        EvalError: As `protocols.evaluate`.
    """
    categories = checked_categories(gt, predictions, source, classes)
    image_ids = [im["id"] for im in gt.coco["images"]]
    if protocol == "coco":
        return CocoMatches(coco_evaluator(gt, predictions, categories), image_ids)
    if protocol == "visdrone":
        return VisdroneMatches(visdrone_images(gt, predictions, in_file_order), categories, image_ids)
    raise EvalError(f"unknown protocol {protocol!r} (coco or visdrone)")


def resample_weights(n_images, resamples, seed=0):
    """Bootstrap resamples as image weights: each draws `n_images` image indices with replacement.

    Returns:
        (np.ndarray): (resamples, n_images) int64, row r = how often resample r drew each image.
    """
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n_images, n_images), minlength=n_images) for _ in range(resamples)])


def paired_bootstrap(baseline, variant, resamples=1000, seed=0, keys=None, progress=None):
    """Paired percentile bootstrap of the seed-averaged difference `variant - baseline` of each summary metric.

    Every resample draws the validation images with replacement once and weighs all runs (every seed of both
    variants) by that one draw, so the interval covers the validation images' and the seeds' variation together.

    Args:
        baseline (list[Matches]): The baseline's runs, one per seed, all on the same images.
        variant (list[Matches]): The variant's runs at the same seeds, in the same order.
        resamples (int): Bootstrap resamples (the `--resamples` default is 1000).
        seed (int): Seed of the image draws.
        keys (list[str], optional): Metrics to compare (default: all of the protocol's).
        progress (callable, optional): Called with each finished resample's number (1-based), e.g. a progress bar's.

    Returns:
        (dict): metric -> `mean` (mean over seeds of variant minus baseline at the same seed, on the full set),
            `ci95` [lo, hi] (2.5 and 97.5 percentiles over the resamples), `seed_std` (sample standard deviation over
            seeds of the per-seed differences; None with one seed) and `resamples` (the resamples in which the
            metric is defined for every run). All None where the metric is undefined on the full set.

    Raises:
        ValueError: If the runs are not paired: different counts, protocols or images.
    """
    runs = list(baseline) + list(variant)
    if not baseline or len(baseline) != len(variant):
        raise ValueError(f"paired runs expected: {len(baseline)} baseline and {len(variant)} variant runs")
    if len({r.protocol for r in runs}) != 1 or any(r.image_ids != runs[0].image_ids for r in runs):
        raise ValueError("every run must be evaluated under one protocol on the same validation images")
    keys = list(keys or runs[0].keys)
    n = len(baseline)

    def differences(weights):  # (seeds, keys) variant - baseline, NaN where undefined
        values = np.array([[np.nan if v is None else v for v in map(r.metrics(weights).get, keys)] for r in runs])
        return values[n:] - values[:n]

    full = differences(None)
    draws = np.empty((resamples, len(keys)))
    for i, weights in enumerate(resample_weights(len(runs[0].image_ids), resamples, seed)):
        draws[i] = differences(weights).mean(axis=0)
        if progress:
            progress(i + 1)
    result = {}
    for j, key in enumerate(keys):
        if np.isnan(full[:, j]).any():
            result[key] = {"mean": None, "ci95": None, "seed_std": None, "resamples": 0}
            continue
        defined = draws[~np.isnan(draws[:, j]), j]
        lo, hi = np.percentile(defined, [2.5, 97.5]) if len(defined) else (np.nan, np.nan)
        result[key] = {"mean": float(full[:, j].mean()),
                       "ci95": [float(lo), float(hi)] if len(defined) else None,
                       "seed_std": float(full[:, j].std(ddof=1)) if n > 1 else None,
                       "resamples": int(len(defined))}
    return result
