"""Detections in the benchmarks' own submission formats: VisDrone2019-DET result files and a COCO results JSON.

VisDrone (the DET toolkit's `evalDET` and its server): one `<image stem>.txt` per image of the split, every image
included (an image without detections gets an empty file), each line
`bbox_left,bbox_top,bbox_width,bbox_height,score,object_category,-1,-1` in original-image pixels, categories 1-10,
highest score first; detections in ignored regions left out, then at most 500 lines per image (`saveAnnoRes.m` drops
those in ignored regions before `calcAccuracy.m` reads the first 500 rows). COCO (`pycocotools.coco.COCO.loadRes`, the evaluation server): a JSON list of
`{"image_id", "category_id", "bbox": [x, y, w, h], "score"}` with the original image ids and 91-id category ids.

Predictions come in the format `yolo val save_json=True` writes (see `protocols`): they are mapped back to class
indices through the ground truth's `category_ids`, then to the benchmark's ids. Numbers are written with Python's
shortest round-trip float repr, so reading the files back gives exactly the predictions written.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from ..data.coco import COCO_IDS_FILE
from ..data.output import atomic_dir
from ..data.visdrone import NAMES as VISDRONE_NAMES
from .protocols import EvalError, GroundTruth, by_score, visdrone_kept

__all__ = ("coco_original_ids", "read_visdrone_results", "save_results", "write_coco_results",
           "write_visdrone_results")

def _check_visdrone_classes(gt):
    if tuple(gt.names.values()) != VISDRONE_NAMES:
        raise EvalError(f"VisDrone result files need the 10 VisDrone classes {VISDRONE_NAMES}, this dataset has "
                        f"{tuple(gt.names.values())}")


def write_visdrone_results(folder: str | Path, gt: GroundTruth, predictions: list[dict]) -> int:
    """Write VisDrone2019-DET result files, one `<image stem>.txt` per image of the split, into `folder`.

    Args:
        folder (str | Path): Output folder; it appears only when complete and replaces an existing folder of
            result files (`.txt` files of 8-field lines only), never anything else, e.g. a split's YOLO labels.
        gt (GroundTruth): The split (`protocols.load_ground_truth`) of a dataset with the 10 VisDrone classes.
        predictions (list[dict]): `save_json`-format detections (pixel `bbox` x, y, w, h of the original image).

    Returns:
        (int): Number of detection lines written: per image, highest score first, without those the toolkit drops in
            ignored regions, then at most 500 (the toolkit's order, so it scores exactly these).

    Raises:
        EvalError: If the dataset's classes are not VisDrone's, or `folder` holds other files.

    Example:
        >>> write_visdrone_results("results/", gt, [{"image_id": "0000001_00000_d_0000001", "category_id": 4,
        ...     "bbox": [10.0, 20.0, 30.0, 15.0], "score": 0.9}])  # -> results/0000001_00000_d_0000001.txt
        1
    """
    _check_visdrone_classes(gt)
    folder = Path(folder)
    if folder.exists() and not _is_result_folder(folder):
        raise EvalError(f"{folder}: exists and is not a folder of VisDrone result files; not replacing it")
    groups, written = by_score(predictions), 0
    with atomic_dir(folder, overwrite=True) as tmp:
        for image in gt.coco["images"]:
            kept = visdrone_kept(gt, image, groups.get(image["id"], []))
            lines = []
            for p in kept:
                category = gt.category_ids.index(p["category_id"]) + 1
                left, top, width, height = (float(v) for v in p["bbox"])
                lines.append(f"{left!r},{top!r},{width!r},{height!r},{float(p['score'])!r},{category},-1,-1\n")
            (tmp / f"{Path(image['file_name']).stem}.txt").write_text("".join(lines))
            written += len(lines)
    return written


def _is_result_folder(folder):
    """True for a folder of `.txt` files whose every line has the 8 fields of a result line (not, e.g., YOLO labels)."""
    if not folder.is_dir():
        return False
    for path in folder.iterdir():
        if path.suffix != ".txt" or not path.is_file():
            return False
        if any(len(line.split(",")) != 8 for line in path.read_text(errors="replace").splitlines() if line.strip()):
            return False
    return True


def read_visdrone_results(folder: str | Path, gt: GroundTruth) -> list[dict]:
    """Read VisDrone2019-DET result files back into `save_json`-format detections for `protocols.evaluate`.

    Args:
        folder (str | Path): Folder with one `<image stem>.txt` per image of the split (as the toolkit requires).
        gt (GroundTruth): The split, with the 10 VisDrone classes.

    Returns:
        (list[dict]): Detections with the split's image ids and category ids.

    Raises:
        EvalError: If the folder or an image's file is missing, or a line is malformed (message `file:line`).

    Example:
        >>> predictions = read_visdrone_results("results/", load_ground_truth("VisDrone.yaml"))
    """
    _check_visdrone_classes(gt)
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalError(f"{folder}: no such folder")
    paths = [folder / f"{Path(image['file_name']).stem}.txt" for image in gt.coco["images"]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise EvalError(f"{folder}: {len(missing)} result file(s) missing, e.g. {missing[:3]} (the VisDrone toolkit "
                        "needs one file per image, empty if no detection)")
    predictions = []
    for image, path in zip(gt.coco["images"], paths):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                left, top, width, height, score, category = (float(v) for v in line.split(",")[:6])
                category_id = gt.category_ids[int(category) - 1] if 1 <= category <= 10 else None
            except ValueError:
                category_id = None
            if category_id is None or len(line.split(",")) != 8:
                raise EvalError(f"{path}:{number}: not a VisDrone result line "
                                f"(left,top,width,height,score,category 1-10,-1,-1): {line!r}")
            predictions.append({"image_id": image["id"], "category_id": category_id,
                                "bbox": [left, top, width, height], "score": score})
    return predictions


def coco_original_ids(images_dir: str | Path, gt: GroundTruth) -> tuple[dict, dict]:
    """Original COCO image and category ids of a split converted by `ema-yolo convert coco`.

    Reads `coco_ids.json`, written by the converter beside the split's `images/` folder. Without it (e.g. the
    Ultralytics COCO download) file stems must be the image ids and the dataset must have the standard 80 classes.

    Args:
        images_dir (str | Path): The split's images folder.
        gt (GroundTruth): The split.

    Returns:
        (tuple[dict, dict, Path | None]): {split image id: original image id}, {split category id: original
            category id}, and the instances JSON the converter read (None without `coco_ids.json`).

    Raises:
        EvalError: If the ids cannot be recovered (the message says why).
    """
    from ultralytics.data.converter import coco80_to_coco91_class

    record = Path(images_dir).parent / COCO_IDS_FILE
    if record.is_file():
        ids = json.loads(record.read_text())
        missing = [im["file_name"] for im in gt.coco["images"] if im["file_name"] not in ids["images"]]
        if missing or len(ids["category_ids"]) != len(gt.category_ids):
            raise EvalError(f"{record}: does not describe this split ({len(missing)} image(s) not listed, e.g. "
                            f"{missing[:2]}; {len(ids['category_ids'])} categories for {len(gt.category_ids)} classes)")
        image_ids = {im["id"]: ids["images"][im["file_name"]] for im in gt.coco["images"]}
        return image_ids, dict(zip(gt.category_ids, ids["category_ids"])), Path(ids["annotations"])
    stems = [im["id"] for im in gt.coco["images"] if not isinstance(im["id"], int)]
    if stems or len(gt.category_ids) != 80:
        raise EvalError(f"{record}: not found (written by `ema-yolo convert coco`); without it the file stems must be "
                        f"COCO image ids (not {stems[:2]}) and the dataset must have the 80 COCO classes "
                        f"(it has {len(gt.category_ids)})")
    return {im["id"]: im["id"] for im in gt.coco["images"]}, dict(zip(gt.category_ids, coco80_to_coco91_class())), None


def write_coco_results(file: str | Path, predictions: list[dict], image_ids: dict, category_ids: dict) -> int:
    """Write a COCO detection results JSON (`loadRes` format) with original image and category ids.

    Args:
        file (str | Path): Output JSON; written to a temporary file beside it, then renamed.
        predictions (list[dict]): `save_json`-format detections.
        image_ids (dict): Split image id -> original COCO image id (`coco_original_ids`).
        category_ids (dict): Split category id -> original COCO category id (1-90 for COCO's 80 classes).

    Returns:
        (int): Number of detections written.

    Example:
        >>> image_ids, category_ids, _ = coco_original_ids("coco/val2017/images", gt)
        >>> write_coco_results("detections_val2017_results.json", predictions, image_ids, category_ids)
    """
    results = [{"image_id": image_ids[p["image_id"]], "category_id": category_ids[p["category_id"]],
                "bbox": [float(v) for v in p["bbox"]], "score": float(p["score"])} for p in predictions]
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(results))
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
    return len(results)


def save_results(gt: GroundTruth, predictions: list[dict], data: str | Path, split: str = "val",
                 visdrone_dir: str | Path | None = None, coco_file: str | Path | None = None) -> list[str]:
    """What `ema-yolo eval --save-visdrone DIR --save-coco FILE` does; returns one line per file set written."""
    from ultralytics.data.utils import check_det_dataset

    done = []
    if visdrone_dir:
        n = write_visdrone_results(visdrone_dir, gt, predictions)
        done.append(f"{visdrone_dir}: {len(gt.coco['images'])} VisDrone result files, {n} detections")
    if coco_file:
        images_dir = check_det_dataset(str(data), autodownload=False).get(split)
        if not isinstance(images_dir, str) or not Path(images_dir).is_dir():
            raise EvalError(f"{data}: --save-coco needs split '{split}' to be one images folder")
        image_ids, category_ids, source = coco_original_ids(images_dir, gt)
        n = write_coco_results(coco_file, predictions, image_ids, category_ids)
        done.append(f"{coco_file}: {n} detections with the image and category ids of {source or 'COCO'}")
    return done
