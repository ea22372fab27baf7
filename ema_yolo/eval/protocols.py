"""Detection metrics under the COCO rules (pycocotools) or the VisDrone2019-DET rules (the official toolkit, ported).

Ground truth is what Ultralytics' validator sees: every image of the split goes through Ultralytics' own label check
(`ultralytics.data.utils.verify_image_label`), so polygon rows become boxes, duplicate rows are removed and an image
with a bad label (out of bounds, negative, unknown class, ...) is dropped, one line per file saying so. Predictions
use exactly the format `yolo val save_json=True` writes: `image_id` (file stem, an int when numeric), `category_id`
(class index + 1, or the COCO 91-id on COCO val2017), `bbox` (pixel x, y, w, h) and `score`.

`coco`: pycocotools' COCOeval. A split written by `ema-yolo convert coco` also carries the original annotation areas
and the crowd boxes (`iscrowd: 1`, with their category and area) in `coco_ids.json`, used exactly as pycocotools uses
them on the original JSON: areas for the APs/m/l ranges, crowd boxes as regions a detection may overlap unpunished.

`visdrone`: the VisDrone2019-DET toolkit's `evalDET` (`visdrone_toolkit`), with the ignored regions of
`ignored/<stem>.txt` (written by `ema-yolo convert visdrone`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..data.coco import COCO_IDS_FILE
from ..data.images import image_files
from .visdrone_toolkit import evaluate_toolkit, keep_outside_ignored

__all__ = (
    "EvalError", "GroundTruth", "checked_categories", "coco_evaluator", "evaluate", "format_metric", "format_table",
    "load_ground_truth", "match_classes", "visdrone_images", "visdrone_kept",
)  # fmt: skip

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
VISDRONE_KEYS = ("AP", "AP50", "AP75", "AR1", "AR10", "AR100", "AR500")


class EvalError(Exception):
    """Bad evaluation input (the message names the file or the offending entries)."""


class GroundTruth:
    """A split's ground truth as a COCO dict, plus each image's ignored regions (pixel x, y, w, h).

    Attributes:
        coco (dict): COCO-format `images`, `annotations` (crowd boxes with `iscrowd: 1`) and `categories`.
        ignored (dict): image id -> VisDrone ignored regions.
        names (dict): class index -> name, from the dataset YAML.
        category_ids (list): class index -> the `category_id` Ultralytics' validator writes for it.
        dropped (list[str]): One line per label file Ultralytics' check dropped or changed, saying why.
    """

    def __init__(self, coco: dict, ignored: dict, names: dict[int, str], category_ids: list[int],
                 dropped: Iterable[str] = ()):
        self.coco, self.ignored, self.names, self.category_ids = coco, ignored, names, category_ids
        self.dropped = list(dropped)


def _image_id(stem):
    return int(stem) if stem.isnumeric() else stem


def _sibling(image, folder):
    """.../images/x.jpg -> .../<folder>/x.txt: Ultralytics' images -> labels rule (`img2label_paths`)."""
    images, other = f"{os.sep}images{os.sep}", f"{os.sep}{folder}{os.sep}"
    return Path(other.join(str(image).rsplit(images, 1))).with_suffix(".txt")


def _check_dataset(data_yaml):
    """Ultralytics' `check_det_dataset`, its errors as one `EvalError` line naming the YAML."""
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.utils import DATASETS_DIR

    try:
        return check_det_dataset(str(data_yaml), autodownload=False)
    except (FileNotFoundError, SyntaxError, TypeError, ValueError) as e:
        message = str(e).strip().splitlines()[0].replace("❌", "").strip() if str(e).strip() else type(e).__name__
        if "missing path" in message:
            message += f" (a relative path is read from the working folder, else from Ultralytics' datasets_dir {DATASETS_DIR})"
        raise EvalError(f"{data_yaml}: {message}") from None


class _CocoRecord:
    """Original areas and crowd boxes of a split from `ema-yolo convert coco` (its `coco_ids.json`), if any."""

    def __init__(self, path):
        self.path = path
        record = json.loads(path.read_text())
        if "crowd" not in record or "areas" not in record:
            raise EvalError(f"{path}: written by an older `ema-yolo convert coco`, without the crowd boxes and areas "
                            "the coco protocol needs; re-run `ema-yolo convert coco`")
        self.areas, self.crowd = record["areas"], record["crowd"]

    def areas_of(self, image, label, rows):
        """Original areas of the label rows `rows` ((N, 5) float32, as Ultralytics read them) of `image`."""
        lines = [line.split() for line in label.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        recorded = self.areas.get(image.name, [])
        if len(lines) != len(recorded):
            raise EvalError(f"{self.path}: does not describe {label} (changed since the conversion?); re-run "
                            "`ema-yolo convert coco`")
        by_row = {tuple(np.array(line, np.float32)): area for line, area in zip(lines, recorded)}
        return [by_row[tuple(row)] for row in rows]


def load_ground_truth(data_yaml: str | Path, split: str = "val") -> GroundTruth:
    """Build COCO-format ground truth for `split` of an Ultralytics dataset YAML from its labels.

    Each image and label file goes through Ultralytics' `verify_image_label`, as in its validator's dataset: polygon
    rows become their bounding boxes, duplicate rows are removed, an image whose labels fail the check is left out.
    Each such change is printed to stderr as one `warning:` line and kept in `GroundTruth.dropped`. Boxes are clipped
    to the image, as the validator scores them.

    Returns:
        (GroundTruth): With category ids as `yolo val save_json=True` uses them for this dataset.

    Raises:
        EvalError: If the YAML or the split cannot be read, the split has no images or no label files at all, or a
            `coco_ids.json` beside the images is from an older converter.
    """
    from ultralytics.data.converter import coco80_to_coco91_class
    from ultralytics.data.utils import verify_image_label

    data = _check_dataset(data_yaml)
    val = data.get(split)
    if val is None:
        raise EvalError(f"{data_yaml}: no split '{split}'")
    names = data["names"]
    # Same rule as Ultralytics' DetectionValidator, so its predictions.json files match.
    is_coco = isinstance(val, str) and "coco" in val and val.endswith(("/val2017.txt", "/test-dev2017.txt"))
    category_ids = coco80_to_coco91_class() if is_coco else list(range(1, len(names) + 1))
    try:
        images = image_files(val, recursive=True, lists=True)
    except FileNotFoundError as e:
        raise EvalError(f"{e.filename}: dataset split not found") from None
    if not images:
        raise EvalError(f"{data_yaml}: split '{split}' has no images")
    nkpt, ndim = data.get("kpt_shape", (0, 0))
    coco = {"images": [], "annotations": [], "categories": [{"id": c, "name": names[i]} for i, c in enumerate(category_ids)]}
    ignored, labelled, dropped, records = {}, 0, [], {}

    def annotation(image_id, category, box, area, crowd=0):
        coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": category,
                                    "bbox": box, "area": area, "iscrowd": crowd})

    for image in images:
        label = _sibling(image, "labels")
        labelled += label.is_file()
        im_file, rows, shape, *_, msg = verify_image_label((str(image), str(label), "", False, len(names), nkpt, ndim, False))
        if msg:  # Ultralytics names the image; the label file is where to look
            reason = msg.split(f"{image}: ", 1)[-1].removeprefix("ignoring corrupt image/label: ")
            line = f"{label}: image dropped, as Ultralytics' validator drops it: {reason}" if im_file is None else f"{label}: {reason}"
            dropped.append(line)
            print(f"warning: {line}", file=sys.stderr)
        if im_file is None:
            continue
        height, width = shape
        image_id = _image_id(image.stem)
        coco["images"].append({"id": image_id, "file_name": image.name, "width": width, "height": height})
        if image.parent.parent not in records:
            path = image.parent.parent / COCO_IDS_FILE
            records[image.parent.parent] = _CocoRecord(path) if path.is_file() else None
        record = records[image.parent.parent]
        xyxy = np.column_stack([rows[:, 1] - rows[:, 3] / 2, rows[:, 2] - rows[:, 4] / 2,
                                rows[:, 1] + rows[:, 3] / 2, rows[:, 2] + rows[:, 4] / 2]) * [width, height, width, height]
        xyxy = xyxy.clip(0, [width, height, width, height])
        boxes = np.column_stack([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]]).astype(float)
        areas = record.areas_of(image, label, rows) if record else boxes[:, 2] * boxes[:, 3]
        for cls, box, area in zip(rows[:, 0].astype(int), boxes.tolist(), areas):
            annotation(image_id, category_ids[cls], box, float(area))
        for cls, *box, area in record.crowd.get(image.name, []) if record else []:
            annotation(image_id, category_ids[cls], box, area, crowd=1)
        side = _sibling(image, "ignored")
        if side.is_file():
            ignored[image_id] = [tuple(float(v) for v in r.split()[:4]) for r in side.read_text().splitlines() if r.strip()]
    if not labelled:
        raise EvalError(f"{data_yaml}: no label files for split '{split}' (expected them beside images/ in labels/)")
    return GroundTruth(coco, ignored, names, category_ids, dropped)


def match_classes(model_names: dict[int, str], gt: GroundTruth) -> tuple[dict[int, int], list[str]]:
    """Match a model's classes to the dataset's by name, as `eval --model` scores them.

    Args:
        model_names (dict | list): The model's class index -> name.
        gt (GroundTruth): The split.

    Returns:
        (tuple[dict, list]): {model class index: dataset category id} for the names both have, and the names of the
            dataset classes the model lacks (left out of the evaluation).

    Raises:
        EvalError: If no name matches (the message lists both).
    """
    model_names = dict(enumerate(model_names)) if isinstance(model_names, (list, tuple)) else dict(model_names)
    by_name = {name: gt.category_ids[i] for i, name in gt.names.items()}
    mapping = {i: by_name[name] for i, name in model_names.items() if name in by_name}
    if not mapping:
        raise EvalError(f"the model's classes {list(model_names.values())} share no name with the dataset's "
                        f"{list(gt.names.values())}")
    return mapping, [n for n in gt.names.values() if n not in set(model_names.values())]


def checked_categories(gt, predictions, source="predictions", classes=None):
    """The category ids `evaluate` scores: those of the dataset classes named in `classes` (default: all).

    Raises:
        EvalError: If a prediction names an image or a category id the split does not have (the message names
            `source`).
    """
    _check_predictions(predictions, gt, source)
    names = {gt.category_ids[i]: name for i, name in gt.names.items()}
    return [c for c in gt.category_ids if classes is None or names[c] in classes]


def _check_predictions(predictions, gt, source):
    image_ids = {im["id"] for im in gt.coco["images"]}
    unknown = sorted({p.get("image_id") for p in predictions} - image_ids, key=str)
    if unknown:
        raise EvalError(f"{source}: {len(unknown)} image id(s) not in the dataset split, e.g. {unknown[:3]}")
    categories = set(gt.category_ids)
    wrong = sorted({p.get("category_id") for p in predictions} - categories, key=str)
    if wrong:
        raise EvalError(f"{source}: category ids {wrong[:5]} are not this dataset's ({min(categories)}..{max(categories)})")


def by_image(items):
    """`image_id` -> that image's items (annotations or detections), in their order."""
    groups = {}
    for item in items:
        groups.setdefault(item["image_id"], []).append(item)
    return groups


def by_score(predictions):
    """`image_id` -> that image's detections, highest score first (ties in their order): a result file's order."""
    return {i: sorted(group, key=lambda d: -d["score"]) for i, group in by_image(predictions).items()}


def visdrone_kept(gt: GroundTruth, image: dict, detections: list[dict]) -> list[dict]:
    """The toolkit's order for one image (`saveAnnoRes.m`, then `calcAccuracy.m`): `detections` (in result-file
    order) without those in the image's ignored regions, then the first 500 of them. `image` is a `gt.coco` image."""
    regions = gt.ignored.get(image["id"], [])
    if regions and detections:
        keep = keep_outside_ignored([d["bbox"] for d in detections], regions, image["height"], image["width"])
        detections = [d for d, k in zip(detections, keep) if k]
    return detections[:500]


def visdrone_images(gt, predictions, in_file_order=False):
    """The `visdrone` protocol's per-image input to `visdrone_toolkit`: ground truth and detections outside the
    ignored regions, at most 500 detections per image (`visdrone_kept`), in `gt.coco` image order.

    Args:
        gt (GroundTruth): The split.
        predictions (list[dict]): `save_json`-format detections (already checked against `gt`).
        in_file_order (bool): As for `evaluate`.

    Returns:
        (list[dict]): Per image: `gt_boxes` (G, 4), `gt_classes` (G,), `boxes` (D, 4), `scores` (D,), `classes` (D,).
    """
    groups = by_image(predictions) if in_file_order else by_score(predictions)
    annotations = by_image(a for a in gt.coco["annotations"] if not a["iscrowd"])
    images = []
    for image in gt.coco["images"]:
        gt_rows = annotations.get(image["id"], [])
        gt_boxes = np.array([a["bbox"] for a in gt_rows], np.float64).reshape(-1, 4)
        gt_classes = np.array([a["category_id"] for a in gt_rows])
        keep = keep_outside_ignored(gt_boxes, gt.ignored.get(image["id"], []), image["height"], image["width"])
        dets = visdrone_kept(gt, image, groups.get(image["id"], []))
        images.append({"gt_boxes": gt_boxes[keep], "gt_classes": gt_classes[keep],
                       "boxes": np.array([d["bbox"] for d in dets], np.float64).reshape(-1, 4),
                       "scores": np.array([d["score"] for d in dets], np.float64),
                       "classes": np.array([d["category_id"] for d in dets])})
    return images


def coco_evaluator(gt, predictions, categories):
    """The `coco` protocol's pycocotools COCOeval (bbox, maxDets 1/10/100, over `categories`) after its per-image
    matching (`evaluate()`), before `accumulate()`. Image ids are numbered in `gt.coco` image order.

    Args:
        gt (GroundTruth): The split.
        predictions (list[dict]): `save_json`-format detections (already checked against `gt`).
        categories (list[int]): The category ids to evaluate.

    Returns:
        (pycocotools.cocoeval.COCOeval): With `evalImgs` filled.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    # pycocotools sorts image ids: number them, since file stems mix ints and strings.
    index = {im["id"]: i for i, im in enumerate(gt.coco["images"])}
    coco_dict = {
        **gt.coco,
        "images": [{**im, "id": index[im["id"]]} for im in gt.coco["images"]],
        "annotations": [{**a, "image_id": index[a["image_id"]]} for a in gt.coco["annotations"]],
    }
    predictions = [{**p, "image_id": index[p["image_id"]]} for p in predictions]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        api = COCO()
        api.dataset = coco_dict
        api.createIndex()
        if predictions:
            results = api.loadRes(predictions)
        else:  # no detection: loadRes cannot take none, COCOeval can
            results = COCO()
            results.dataset = {"images": coco_dict["images"], "categories": coco_dict["categories"], "annotations": []}
            results.createIndex()
        evaluator = COCOeval(api, results, "bbox")
        evaluator.params.catIds = list(categories)
        evaluator.evaluate()
    return evaluator


def _coco(gt, predictions, categories):
    """The `coco` protocol: pycocotools' COCOeval (`coco_evaluator`), accumulated and summarised."""
    evaluator = coco_evaluator(gt, predictions, categories)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    metrics = dict(zip(COCO_KEYS, (float(v) if v > -1 else None for v in evaluator.stats)))

    def valid_mean(values):  # pycocotools marks "no ground truth here" with -1: undefined, left out of means
        values = values[values > -1]
        return float(values.mean()) if values.size else None

    metrics["per_class"] = {c: valid_mean(precision[:, :, k, 0, -1]) for k, c in enumerate(evaluator.params.catIds)}
    return metrics


def evaluate(gt: GroundTruth, predictions: list[dict], protocol: str = "coco", source: str = "predictions",
             classes: list[str] | None = None, in_file_order: bool = False) -> dict:
    """Score `predictions` against `gt` under the `coco` or `visdrone` protocol.

    A metric is None where it is undefined: where pycocotools marks -1 (a class without ground truth, APl without
    large objects, ...), or for the toolkit a class without ground truth (after the ignored regions). Means leave
    undefined values out; a class present but missed scores 0.0.

    Args:
        gt (GroundTruth): The split.
        predictions (list[dict]): `save_json`-format detections.
        protocol (str): 'coco' or 'visdrone'.
        source (str): Where the predictions came from, for messages.
        classes (list[str], optional): Dataset class names to evaluate (default: all); the others are left out of
            every mean and of `per_class`.
        in_file_order (bool): `visdrone`: the predictions are in result-file order (read from files), which the
            toolkit's 500 cap follows; otherwise each image's are taken highest score first, as the files are written.

    Returns:
        (dict): Metrics as floats in [0, 1] or None (keys COCO_KEYS or VISDRONE_KEYS), plus 'per_class' {name: AP}.
    """
    categories = checked_categories(gt, predictions, source, classes)
    names = {gt.category_ids[i]: name for i, name in gt.names.items()}
    if protocol == "visdrone":
        metrics = evaluate_toolkit(visdrone_images(gt, predictions, in_file_order), categories)
    elif protocol == "coco":
        metrics = _coco(gt, predictions, categories)
    else:
        raise EvalError(f"unknown protocol {protocol!r} (coco or visdrone)")
    metrics["per_class"] = {names[c]: ap for c, ap in metrics["per_class"].items()}
    return metrics


def format_metric(value: float | None) -> str:
    """A metric as printed: four decimals, or 'n/a' where it is undefined (None, see `protocols.evaluate`)."""
    return "n/a" if value is None else f"{value:.4f}"


def format_table(metrics: dict, protocol: str) -> str:
    """A terminal table of the summary metrics and per-class AP."""
    lines = [f"{protocol} protocol", "-" * 28]
    lines += [f"{k:<10}{format_metric(v):>10}" for k, v in metrics.items() if k != "per_class"]
    lines += ["-" * 28, "per-class AP"] + [f"{n:<18}{format_metric(ap):>10}" for n, ap in metrics["per_class"].items()]
    return "\n".join(lines)
