"""The bootstrap's re-weighted accumulation against the protocols' own evaluation and against real duplication.

Oracles: at weight 1, pycocotools' `accumulate()` arrays and `summarize()` values (through `protocols.evaluate`) and
the VisDrone toolkit port; at integer weights, pycocotools and the toolkit port run on a set in which every image is
really copied that many times (new ids, copies side by side). Scores are rounded so that ties, also within an image
and class between a true and a false positive, occur.
"""

import contextlib
import io

import numpy as np
import pytest
from test_eval import _dataset, _det

from ema_yolo.eval.bootstrap import CocoMatches, VisdroneMatches, match, paired_bootstrap, resample_weights
from ema_yolo.eval.protocols import COCO_KEYS, checked_categories, coco_evaluator, evaluate, load_ground_truth
from ema_yolo.eval.visdrone_toolkit import evaluate_toolkit


def _assert_metrics_equal(ours, reference, keys):
    for key in keys:
        assert (ours[key] is None) == (reference[key] is None), key
        if ours[key] is not None:
            assert ours[key] == pytest.approx(reference[key], abs=1e-9, rel=0), key


def _eval_cases(tmp_path):
    """The project's eval tests' cases (tests/test_eval.py): (name, ground truth, predictions, evaluate kwargs)."""
    cases = []
    perfect = _dataset(tmp_path / "p", {"1": (200, 160, [(0, 10, 10, 50, 40), (1, 100, 50, 60, 60)]), "img2": (120, 120, [(1, 5, 5, 30, 30)])})
    cases.append(("perfect", perfect, [_det(1, 0, (10, 10, 50, 40)), _det(1, 1, (100, 50, 60, 60)), _det("img2", 1, (5, 5, 30, 30))], {}))
    shift = _dataset(tmp_path / "s", {"7": (300, 200, [(0, 50, 50, 100, 100)])})
    cases.append(("iou shift", shift, [_det(7, 0, (73, 50, 100, 100))], {}))
    ignored = _dataset(tmp_path / "i", {"5": (400, 300, [(0, 20, 20, 40, 40), (0, 300, 200, 30, 30)])}, ignored={"5": [(280, 180, 100, 100)]})
    cases.append(("ignored regions", ignored, [_det(5, 0, (20, 20, 40, 40), 0.8), _det(5, 0, (340, 190, 20, 20), 0.95)], {}))
    cases.append(("half outside", ignored, [_det(5, 0, (20, 20, 40, 40), 0.8), _det(5, 0, (250, 190, 40, 20), 0.95)], {}))
    caps = _dataset(tmp_path / "c", {"3": (1000, 1000, [(0, 500, 500, 50, 50)])})
    for n_false in (150, 500):
        fps = [_det(3, 0, (10 + (i % 30) * 30, 10 + (i // 30) * 30, 20, 20), 0.9) for i in range(n_false)]
        cases.append((f"{n_false} false positives first", caps, fps + [_det(3, 0, (500, 500, 50, 50), 0.1)], {}))
    rng = np.random.default_rng(0)
    images, predictions = {}, []
    for i in range(12):
        boxes = [(int(rng.integers(0, 2)), *map(int, rng.integers(0, 150, 2)), *map(int, rng.integers(8, 60, 2))) for _ in range(5)]
        images[str(i)] = (256, 224, boxes)
        for c, x, y, w, h in boxes:
            jitter = rng.normal(0, 4, 4)
            predictions.append(_det(i, c if rng.random() > 0.1 else 1 - c, (x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]), float(rng.random())))
    jittered = _dataset(tmp_path / "j", images)
    cases.append(("jittered", jittered, predictions, {}))
    cases.append(("no detections", jittered, [], {}))
    boxes = {1: [(0, 10, 10, 50, 40), (2, 100, 50, 60, 60)], 2: [(2, 5, 5, 30, 30)]}
    undefined = _dataset(tmp_path / "u", {str(i): (200, 160, b) for i, b in boxes.items()}, names=("a", "b", "c"))
    perfect3 = [_det(i, c, box) for i, image in boxes.items() for c, *box in image]
    cases += [("undefined class", undefined, perfect3, {}), ("missed class", undefined, perfect3[1:], {}),
              ("two classes of three", undefined, perfect3, {"classes": ["a", "b"]})]
    order = _dataset(tmp_path / "o", {"1": (1000, 1000, [(0, 500, 500, 50, 50), (1, 900, 900, 50, 50)])})
    false = [_det(1, 1, (10 + i % 40 * 20, 10 + i // 40 * 30, 15, 15), 0.1) for i in range(500)]
    true = [_det(1, 0, (500, 500, 50, 50), 0.9), _det(1, 1, (900, 900, 50, 50), 0.9)]
    cases.append(("500 rows in file order", order, false + true, {"in_file_order": True}))
    return [(name, load_ground_truth(data), p, kw) for name, data, p, kw in cases]


def _crowd_case(tmp_path):
    """A split from `ema-yolo convert coco` (original areas, crowd boxes) and jittered, tied predictions."""
    from ema_yolo.data.coco import convert_coco
    from ema_yolo.data.synth import make_coco_raw

    make_coco_raw(tmp_path / "raw", images=6)
    convert_coco(tmp_path / "raw" / "annotations.json", tmp_path / "raw" / "images", tmp_path / "coco")
    gt = load_ground_truth(tmp_path / "coco" / "data.yaml")
    rng = np.random.default_rng(1)
    predictions = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": round(float(rng.random()), 1),
                    "bbox": [v + float(rng.normal(0, 3)) for v in a["bbox"]]} for a in gt.coco["annotations"] for _ in range(2)]
    return gt, predictions


def test_weight_one_equals_the_protocols(tmp_path):
    cases = _eval_cases(tmp_path) + [("converted coco, crowd boxes", *_crowd_case(tmp_path), {})]
    for name, gt, predictions, kwargs in cases:
        for protocol in ("coco", "visdrone"):
            if protocol == "coco" and "in_file_order" in kwargs:
                continue
            matches = match(gt, predictions, protocol, **kwargs)
            _assert_metrics_equal(matches.metrics(), evaluate(gt, predictions, protocol, **kwargs), matches.keys)
        classes = kwargs.get("classes")
        if "in_file_order" in kwargs:
            continue
        reference = coco_evaluator(gt, predictions, checked_categories(gt, predictions, classes=classes))
        with contextlib.redirect_stdout(io.StringIO()):
            reference.accumulate()
        precision, recall = match(gt, predictions, "coco", classes=classes).accumulate(np.ones(len(gt.coco["images"]), int))
        np.testing.assert_allclose(precision, reference.eval["precision"], rtol=0, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(recall, reference.eval["recall"], rtol=0, atol=1e-9, err_msg=name)


def _random_coco(rng, n_images=24, n_classes=3):
    """A COCO dict (crowd boxes, objects of every area range) and predictions with scores rounded to 0.1."""
    coco = {"images": [], "annotations": [], "categories": [{"id": c + 1} for c in range(n_classes)]}
    predictions = []

    def det(i, c, box):
        predictions.append({"image_id": i, "category_id": c, "bbox": box, "score": round(float(rng.random()), 1)})

    for i in range(n_images):
        coco["images"].append({"id": i, "width": 640, "height": 480})
        for _ in range(rng.integers(0, 6)):
            c, (x, y), (w, h) = int(rng.integers(1, n_classes + 1)), rng.uniform(0, 400, 2), rng.uniform(5, 150, 2)
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "category_id": c,
                                        "bbox": [x, y, w, h], "area": w * h * rng.uniform(0.8, 1.2),
                                        "iscrowd": int(rng.random() < 0.1)})
            for _ in range(rng.integers(0, 3)):
                j = rng.normal(0, 8, 4)
                det(i, c if rng.random() > 0.2 else int(rng.integers(1, n_classes + 1)), [x + j[0], y + j[1], max(1, w + j[2]), max(1, h + j[3])])
        for _ in range(rng.integers(0, 4)):
            det(i, int(rng.integers(1, n_classes + 1)), [*rng.uniform(0, 500, 2), *rng.uniform(3, 100, 2)])
    return coco, [{**p, "bbox": [float(v) for v in p["bbox"]]} for p in predictions]


def _cocoeval(coco, predictions, accumulate=True):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO()
        api.dataset = coco
        api.createIndex()
        evaluator = COCOeval(api, api.loadRes([dict(p) for p in predictions]), "bbox")
        evaluator.evaluate()
        if accumulate:
            evaluator.accumulate(), evaluator.summarize()
    return evaluator


def _duplicated(coco, predictions, weights):
    """The set with image i copied weights[i] times: new ids, copies side by side in id order."""
    copies, images = {}, []
    for image in coco["images"]:
        copies[image["id"]] = list(range(len(images), len(images) + weights[image["id"]]))
        images += [{**image, "id": new} for new in copies[image["id"]]]
    annotations = [{**a, "image_id": new} for a in coco["annotations"] for new in copies[a["image_id"]]]
    annotations = [{**a, "id": n + 1} for n, a in enumerate(annotations)]
    return ({**coco, "images": images, "annotations": annotations},
            [{**p, "image_id": new} for p in predictions for new in copies[p["image_id"]]])


def test_coco_integer_weights_equal_copied_images():
    rng = np.random.default_rng(1)
    spelled_out = 0
    for _ in range(6):
        coco, predictions = _random_coco(rng)
        matches = CocoMatches(_cocoeval(coco, predictions, accumulate=False), [im["id"] for im in coco["images"]])
        spelled_out += matches._ranking(100).mixed  # a tie of a true and a false positive within one image and class
        for weights in (rng.integers(0, 4, len(coco["images"])), resample_weights(len(coco["images"]), 1, 7)[0]):
            copied = _cocoeval(*_duplicated(coco, predictions, weights))
            precision, recall = matches.accumulate(weights)
            np.testing.assert_allclose(precision, copied.eval["precision"], rtol=0, atol=1e-9)
            np.testing.assert_allclose(recall, copied.eval["recall"], rtol=0, atol=1e-9)
            _assert_metrics_equal(matches.metrics(weights), {k: None if v == -1 else v for k, v in zip(COCO_KEYS, copied.stats)}, COCO_KEYS)
    assert spelled_out >= 3


def _random_toolkit_images(rng, n_images=20, n_classes=3):
    """`visdrone_toolkit` input: detections in random file order (not by score), a few images with over 500 rows."""
    images = []
    for i in range(n_images):
        g = int(rng.integers(0, 6))
        gt_boxes = np.column_stack([rng.uniform(0, 400, (g, 2)), rng.uniform(5, 80, (g, 2))])
        gt_classes = rng.integers(1, n_classes + 1, g)
        n = 530 if i % 7 == 3 else int(rng.integers(0, 12))
        near = rng.integers(0, max(g, 1), n)
        boxes = (gt_boxes[near] if g else np.full((n, 4), 50.0)) + rng.normal(0, 6, (n, 4))
        classes = np.where(rng.random(n) < 0.8, gt_classes[near] if g else 1, rng.integers(1, n_classes + 1, n))
        images.append({"gt_boxes": gt_boxes, "gt_classes": gt_classes, "boxes": boxes,
                       "scores": np.round(rng.random(n), 1), "classes": classes})
    return images


def test_visdrone_integer_weights_equal_copied_images():
    rng = np.random.default_rng(3)
    for _ in range(4):
        images, classes = _random_toolkit_images(rng), [1, 2, 3]
        matches = VisdroneMatches(images, classes, list(range(len(images))))
        assert matches.ranking.mixed
        for weights in (np.ones(len(images), int), rng.integers(0, 4, len(images))):
            copied = evaluate_toolkit([image for image, k in zip(images, weights) for _ in range(k)], classes)
            _assert_metrics_equal(matches.metrics(weights), copied, matches.keys)
            ap, _, _ = matches.accumulate(weights)
            per_class = {c: float(ap[k].mean()) if copied["per_class"][c] is not None else None for k, c in enumerate(classes)}
            _assert_metrics_equal(per_class, copied["per_class"], classes)


def test_paired_bootstrap(tmp_path):
    coco, baseline = _random_coco(np.random.default_rng(5), n_images=12)
    rng = np.random.default_rng(6)
    variants = [[{**p, "score": round(float(rng.random()), 1)} for p in baseline] for _ in range(2)]
    ids = [im["id"] for im in coco["images"]]

    def matches(predictions):
        return CocoMatches(_cocoeval(coco, predictions, accumulate=False), ids)

    def stats(predictions, weights=None):
        evaluator = _cocoeval(*_duplicated(coco, predictions, np.ones(len(ids), int) if weights is None else weights))
        return dict(zip(COCO_KEYS, evaluator.stats))

    # an identical pair of runs: every difference is exactly 0
    same = paired_bootstrap([matches(baseline)] * 2, [matches(baseline), matches(baseline)], resamples=50)
    large = np.bincount([a["image_id"] for a in coco["annotations"] if a["area"] > 96**2 and not a["iscrowd"]], minlength=len(ids))
    with_large = int((resample_weights(len(ids), 50) @ large > 0).sum())  # APl, ARl are undefined without large objects
    assert 0 < with_large < 50
    for key in COCO_KEYS:
        drawn = with_large if key in ("APl", "ARl") else 50
        assert same[key] == {"mean": 0.0, "ci95": [0.0, 0.0], "seed_std": 0.0, "resamples": drawn}, key
    # two seeds: mean and seed_std from the full evaluation, the interval's one resample from pycocotools on real copies
    runs = [matches(p) for p in [baseline, baseline, *variants]]
    result = paired_bootstrap(runs[:2], runs[2:], resamples=1, seed=3)
    weights = resample_weights(len(ids), 1, 3)[0]
    base, base_drawn = stats(baseline), stats(baseline, weights)
    for key in ("AP", "AP50", "AR100", "APs"):
        full = [stats(v)[key] - base[key] for v in variants]
        drawn = np.mean([stats(v, weights)[key] - base_drawn[key] for v in variants])
        assert result[key]["mean"] == pytest.approx(np.mean(full), abs=1e-12)
        assert result[key]["seed_std"] == pytest.approx(np.std(full, ddof=1), abs=1e-12)
        assert result[key]["ci95"] == pytest.approx([drawn, drawn], abs=1e-12) and result[key]["resamples"] == 1
    one_seed = paired_bootstrap(runs[:1], runs[2:3], resamples=200)
    assert one_seed["AP"]["seed_std"] is None and one_seed["AP"]["ci95"][0] < one_seed["AP"]["ci95"][1]
    with pytest.raises(ValueError, match="paired runs"):
        paired_bootstrap(runs[:2], runs[2:3])
    with pytest.raises(ValueError, match="same validation images"):
        paired_bootstrap(runs[:1], [CocoMatches(_cocoeval(coco, baseline, accumulate=False), ids[::-1])])
    with pytest.raises(ValueError, match="non-negative integers"):
        runs[0].metrics(np.full(len(ids), 0.5))
