"""COCO instances JSON -> YOLO labels: the 80 standard classes (91 -> 80 ids) or any custom COCO-format file.

Crowd annotations (`iscrowd: 1`) are not training labels. An image listed without annotations is a background image
(empty label file). Boxes are clipped to the image; empty ones are dropped and counted. `coco_ids.json` records what
the labels cannot hold and the evaluation needs, to score as pycocotools does on the original JSON:
- `images` (file name -> image id), `category_ids` (class index -> category id), `annotations` (the JSON read), for
  COCO result files;
- `areas`: file name -> the original `area` of each label row, in row order (pycocotools' APs/m/l ranges use it);
- `crowd`: file name -> `[class, left, top, width, height, area]` of each crowd box, as in the JSON (unclipped).
"""

from __future__ import annotations

import json
from pathlib import Path

from .output import ConversionError, Report, atomic_dir, box_to_yolo, dataset_yaml, place_image

__all__ = ("COCO_IDS_FILE", "category_mapping", "convert_coco")

COCO_IDS_FILE = "coco_ids.json"  # beside the converted images/ folder


def _standard_coco_ids():
    """The 80 category ids (of the 91-id space) of standard COCO, in class order."""
    from ultralytics.data.converter import coco80_to_coco91_class

    return coco80_to_coco91_class()


def category_mapping(categories: list[dict], mode: str = "auto") -> dict[int, int]:
    """Map COCO category ids to YOLO class indices.

    Args:
        categories (list[dict]): The JSON's `categories` (`id`, `name`).
        mode (str): 'coco80' (standard 91 -> 80 mapping), 'custom' (the file's ids in ascending order -> 0..n-1), or
            'auto' (coco80 when the ids are exactly standard COCO's 80, else custom).

    Returns:
        (tuple[dict, list]): {category id: class index} and class names in index order.
    """
    by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    standard = _standard_coco_ids()
    if mode == "auto":
        mode = "coco80" if sorted(by_id) == sorted(standard) else "custom"
    if mode == "coco80":
        mapping = {cid: i for i, cid in enumerate(standard)}
        return mapping, [by_id.get(cid, str(cid)) for cid in standard]
    if mode != "custom":
        raise ValueError(f"unknown category mapping {mode!r}")
    ids = sorted(by_id)
    return {cid: i for i, cid in enumerate(ids)}, [by_id[cid] for cid in ids]


def _load_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ConversionError(f"{path}: not a COCO instances file (no '{key}' list)")
    return data


def convert_coco(annotations_json: str | Path, images_dir: str | Path, dst: str | Path, mapping: str = "auto",
                 overwrite: bool = False) -> Report:
    """Convert a COCO instances JSON and its image folder into a YOLO dataset at `dst` (with `data.yaml`).

    Returns:
        (Report): Counts and problems.

    Raises:
        ConversionError: If the JSON is unreadable or not COCO, or `dst` exists (without `overwrite`).
    """
    from ultralytics.utils import TQDM

    report, images_dir = Report(), Path(images_dir)
    data = _load_json(annotations_json)
    classes, names = category_mapping(data["categories"], mapping)
    images, per_image, converted, areas, crowd = {}, {}, {}, {}, {}
    for image in data["images"]:
        images[image["id"]] = image
        per_image[image["id"]] = []
    for ann in data["annotations"]:
        image_id = ann.get("image_id")
        if image_id not in images:
            report.problem(annotations_json, f"annotation {ann.get('id')} refers to unknown image id {image_id!r}")
        elif ann.get("category_id") not in classes:
            report.problem(annotations_json, f"annotation {ann.get('id')} has unknown category id {ann.get('category_id')!r}")
        elif not (isinstance(ann.get("bbox"), list) and len(ann["bbox"]) == 4):
            report.problem(annotations_json, f"annotation {ann.get('id')} has no [x, y, w, h] bbox")
        else:
            per_image[image_id].append(ann)

    with atomic_dir(dst, overwrite) as tmp:
        for sub in ("images", "labels"):
            (tmp / sub).mkdir()
        for image_id, image in TQDM(images.items(), desc="COCO"):
            source = images_dir / image["file_name"]
            if not source.is_file():
                report.problem(source, f"image {image_id} listed in {annotations_json} is missing; skipped")
                continue
            width, height = image["width"], image["height"]
            rows, row_areas, crowds = [], [], []
            for ann in per_image[image_id]:
                x, y, w, h = (float(v) for v in ann["bbox"])
                area = float(ann.get("area", w * h))
                if ann.get("iscrowd"):
                    crowds.append([classes[ann["category_id"]], x, y, w, h, area])
                    continue
                yolo = box_to_yolo(x, y, w, h, width, height)
                if yolo is None:
                    report.count("boxes empty after clipping")
                    continue
                rows.append(f"{classes[ann['category_id']]} " + " ".join(f"{v:.6f}" for v in yolo))
                row_areas.append(area)
            name = Path(image["file_name"]).name
            place_image(source, tmp / "images" / name)
            (tmp / "labels" / f"{Path(name).stem}.txt").write_text("".join(r + "\n" for r in rows))
            converted[name], areas[name] = image_id, row_areas
            if crowds:
                crowd[name] = crowds
            report.count("images")
            report.count("boxes", len(rows))
            report.count("crowd regions", len(crowds))
        (tmp / "data.yaml").write_text(dataset_yaml(dst, {"train": "images", "val": "images"}, names))
        ids = {"annotations": str(Path(annotations_json).resolve()), "images": converted,
               "category_ids": sorted(classes, key=classes.get), "areas": areas, "crowd": crowd}
        (tmp / COCO_IDS_FILE).write_text(json.dumps(ids))
        if not report.counts.get("images"):
            raise ConversionError(f"{annotations_json}: no image could be converted")
    return report
