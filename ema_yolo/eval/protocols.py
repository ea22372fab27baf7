"""Detection metrics with pycocotools, under the COCO or the VisDrone2019-DET rules.

Ground truth comes from a dataset's YOLO labels. Predictions use exactly the format `yolo val save_json=True` writes:
`image_id` (file stem, an int when numeric), `category_id` (class index + 1, or the COCO 91-id on COCO val2017),
`bbox` (pixel x, y, w, h) and `score`.

VisDrone rules (the official toolkit's `evalDET`): at most 500 detections per image; ground truth and detections with
more than half of their area inside the image's ignored regions are removed; AP at IoU 0.50:0.95, AP50, AP75 and
AR at 1/10/100/500 detections, over all object sizes.
"""

import contextlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ("EvalError", "GroundTruth", "evaluate", "load_ground_truth")

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
VISDRONE_KEYS = ("AP", "AP50", "AP75", "AR1", "AR10", "AR100", "AR500")


class EvalError(Exception):
    """Bad evaluation input (the message names the file or the offending entries)."""


class GroundTruth:
    """A split's ground truth as a COCO dict, plus each image's ignored regions (pixel x, y, w, h)."""

    def __init__(self, coco, ignored, names, category_ids):
        self.coco, self.ignored, self.names, self.category_ids = coco, ignored, names, category_ids


def _image_id(stem):
    return int(stem) if stem.isnumeric() else stem


def _image_files(source):
    """Image paths of a dataset split entry (folder, .txt list, or list of either), as Ultralytics reads them."""
    from ultralytics.data.utils import IMG_FORMATS

    files = []
    for entry in source if isinstance(source, list) else [source]:
        p = Path(entry)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix[1:].lower() in IMG_FORMATS)
        elif p.is_file():
            files += [p.parent / line.strip() if line.strip().startswith("./") else Path(line.strip())
                      for line in p.read_text().splitlines() if line.strip()]
        else:
            raise EvalError(f"{p}: dataset split not found")
    return files


def _sibling(image, folder):
    """.../images/x.jpg -> .../<folder>/x.txt: Ultralytics' images -> labels rule (`img2label_paths`)."""
    images, other = f"{os.sep}images{os.sep}", f"{os.sep}{folder}{os.sep}"
    return Path(other.join(str(image).rsplit(images, 1))).with_suffix(".txt")


def load_ground_truth(data_yaml, split="val"):
    """Build COCO-format ground truth for `split` of an Ultralytics dataset YAML from its YOLO labels.

    Returns:
        (GroundTruth): With category ids as `yolo val save_json=True` uses them for this dataset.

    Raises:
        EvalError: If the split has no images or no label files at all, or a label file is malformed.
    """
    from ultralytics.data.converter import coco80_to_coco91_class
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(data_yaml), autodownload=False)
    val = data.get(split)
    names = data["names"]
    # Same rule as Ultralytics' DetectionValidator, so its predictions.json files match.
    is_coco = isinstance(val, str) and "coco" in val and val.endswith(("/val2017.txt", "/test-dev2017.txt"))
    category_ids = coco80_to_coco91_class() if is_coco else list(range(1, len(names) + 1))
    images = _image_files(val)
    if not images:
        raise EvalError(f"{data_yaml}: split '{split}' has no images")
    coco = {"images": [], "annotations": [], "categories": [{"id": c, "name": names[i]} for i, c in enumerate(category_ids)]}
    ignored, labelled = {}, 0
    for image in images:
        with Image.open(image) as im:
            width, height = im.size
        image_id = _image_id(image.stem)
        coco["images"].append({"id": image_id, "file_name": image.name, "width": width, "height": height})
        label = _sibling(image, "labels")
        if label.is_file():
            labelled += 1
            for number, line in enumerate(label.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    cls, cx, cy, w, h = (float(v) for v in line.split()[:5])
                    category = category_ids[int(cls)]
                except (ValueError, IndexError):
                    raise EvalError(f"{label}:{number}: not a YOLO label row for {len(names)} classes: {line!r}") from None
                box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": category,
                                            "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
        side = _sibling(image, "ignored")
        if side.is_file():
            ignored[image_id] = [tuple(float(v) for v in r.split()[:4]) for r in side.read_text().splitlines() if r.strip()]
    if not labelled:
        raise EvalError(f"{data_yaml}: no label files for split '{split}' (expected them beside images/ in labels/)")
    return GroundTruth(coco, ignored, names, category_ids)


def _check_predictions(predictions, gt, source):
    image_ids = {im["id"] for im in gt.coco["images"]}
    unknown = sorted({p.get("image_id") for p in predictions} - image_ids, key=str)
    if unknown:
        raise EvalError(f"{source}: {len(unknown)} image id(s) not in the dataset split, e.g. {unknown[:3]}")
    categories = set(gt.category_ids)
    wrong = sorted({p.get("category_id") for p in predictions} - categories, key=str)
    if wrong:
        raise EvalError(f"{source}: category ids {wrong[:5]} are not this dataset's ({min(categories)}..{max(categories)})")


def _inside_ignored_fraction(boxes, regions, width, height):
    """Fraction of each pixel box (x, y, w, h) covered by the union of `regions`, via an integral image."""
    mask = np.zeros((height + 1, width + 1), np.int64)
    for x, y, w, h in regions:
        x0, y0 = int(round(max(x, 0))), int(round(max(y, 0)))
        x1, y1 = int(round(min(x + w, width))), int(round(min(y + h, height)))
        mask[y0 + 1 : y1 + 1, x0 + 1 : x1 + 1] = 1
    integral = mask.cumsum(0).cumsum(1)
    out = []
    for x, y, w, h in boxes:
        x0, y0 = int(round(min(max(x, 0), width))), int(round(min(max(y, 0), height)))
        x1, y1 = int(round(min(max(x + w, 0), width))), int(round(min(max(y + h, 0), height)))
        area = max(w * h, 1e-9)
        covered = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        out.append(covered / area)
    return out


def _drop_in_ignored(gt, predictions):
    """Apply the VisDrone rule: remove ground truth and detections more than half inside ignored regions."""
    sizes = {im["id"]: (im["width"], im["height"]) for im in gt.coco["images"]}
    keep_ann, keep_pred = [], []
    for items, keep in ((gt.coco["annotations"], keep_ann), (predictions, keep_pred)):
        for image_id, group in by_image(items).items():
            regions = gt.ignored.get(image_id)
            if not regions:
                keep += group
                continue
            fractions = _inside_ignored_fraction([g["bbox"] for g in group], regions, *sizes[image_id])
            keep += [g for g, f in zip(group, fractions) if f <= 0.5]
    return {**gt.coco, "annotations": keep_ann}, keep_pred


def by_image(items):
    """`image_id` -> that image's items (annotations or detections), in their order."""
    groups = {}
    for item in items:
        groups.setdefault(item["image_id"], []).append(item)
    return groups


def top_per_image(predictions, max_det):
    """`image_id` -> that image's `max_det` highest-scoring detections, highest first."""
    return {i: sorted(group, key=lambda d: -d["score"])[:max_det] for i, group in by_image(predictions).items()}


def _cap_per_image(predictions, max_det):
    return [p for group in top_per_image(predictions, max_det).values() for p in group]


def evaluate(gt, predictions, protocol="coco", source="predictions"):
    """Score `predictions` against `gt` with pycocotools under the `coco` or `visdrone` protocol.

    A metric is None where it is undefined, as pycocotools marks with -1: the AP of a class without ground truth
    (after the VisDrone ignored-region rule), APl/ARl without large objects, and so on. Means leave undefined values
    out, as pycocotools' `summarize` does and as the VisDrone toolkit's `calcAccuracy` averages over the classes
    present; a class the model missed entirely scores 0.0.

    Returns:
        (dict): Metrics as floats in [0, 1] or None (keys COCO_KEYS or VISDRONE_KEYS), plus 'per_class' {name: AP}.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _check_predictions(predictions, gt, source)
    max_dets = [1, 10, 100] if protocol == "coco" else [1, 10, 100, 500]
    coco_dict, predictions = gt.coco, [dict(p) for p in predictions]
    if protocol == "visdrone":
        predictions = _cap_per_image(predictions, 500)
        coco_dict, predictions = _drop_in_ignored(gt, predictions)
    elif protocol != "coco":
        raise EvalError(f"unknown protocol {protocol!r} (coco or visdrone)")
    # pycocotools sorts image ids: number them, since file stems mix ints and strings.
    index = {im["id"]: i for i, im in enumerate(coco_dict["images"])}
    coco_dict = {
        **coco_dict,
        "images": [{**im, "id": index[im["id"]]} for im in coco_dict["images"]],
        "annotations": [{**a, "image_id": index[a["image_id"]]} for a in coco_dict["annotations"]],
    }
    predictions = [{**p, "image_id": index[p["image_id"]]} for p in predictions]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        api = COCO()
        api.dataset = coco_dict
        api.createIndex()
        if predictions:
            results = api.loadRes(predictions)
        else:  # no detection (none made, or all in ignored regions): loadRes cannot take none, COCOeval can
            results = COCO()
            results.dataset = {"images": coco_dict["images"], "categories": coco_dict["categories"], "annotations": []}
            results.createIndex()
        evaluator = COCOeval(api, results, "bbox")
        evaluator.params.maxDets = max_dets
        evaluator.evaluate()
        evaluator.accumulate()
        if protocol == "coco":
            evaluator.summarize()
    precision, recall = evaluator.eval["precision"], evaluator.eval["recall"]  # [T, R, K, A, M], [T, K, A, M]

    def valid_mean(values):  # pycocotools marks "no ground truth here" with -1: undefined, left out of means
        values = values[values > -1]
        return float(values.mean()) if values.size else None

    def ap(iou=None):
        p = precision if iou is None else precision[np.isclose(evaluator.params.iouThrs, iou)]
        return valid_mean(p[:, :, :, 0, -1])

    if protocol == "coco":
        metrics = dict(zip(COCO_KEYS, (float(v) if v > -1 else None for v in evaluator.stats)))
    else:
        recalls = (valid_mean(recall[:, :, 0, i]) for i in range(len(max_dets)))
        metrics = dict(zip(VISDRONE_KEYS, (ap(), ap(0.5), ap(0.75), *recalls)))
    per_class = {
        gt.names[gt.category_ids.index(category)]: valid_mean(precision[:, :, k, 0, -1])
        for k, category in enumerate(evaluator.params.catIds)
    }
    metrics["per_class"] = per_class
    return metrics
