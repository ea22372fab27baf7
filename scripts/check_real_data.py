"""Check the converters (and, given predictions, the evaluators) on real third-party data, not shipped with the project.

usage: python scripts/check_real_data.py --visdrone-sample DIR --visdrone-annotations DIR [--coco-sample DIR]
"""

import argparse
import collections
import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ema_yolo.data.output import Report
from ema_yolo.data.visdrone import convert_visdrone, parse_annotation
from ema_yolo.eval.protocols import evaluate, format_metric, load_ground_truth


def constructed_predictions(gt, rng):
    """Detections made from the ground truth: jittered boxes (some with the wrong class), misses, false positives."""
    predictions = []
    for ann in gt.coco["annotations"]:
        if rng.random() < 0.15:
            continue  # missed
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
        category = ann["category_id"] if rng.random() > 0.1 else int(rng.choice(gt.category_ids))
        predictions.append({"image_id": ann["image_id"], "category_id": category,
                            "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]], "score": float(rng.random())})
    for image in gt.coco["images"]:
        for _ in range(3):
            w, h = rng.integers(8, 60, 2)
            x, y = rng.integers(0, image["width"] - w), rng.integers(0, image["height"] - h)
            predictions.append({"image_id": image["id"], "category_id": int(rng.choice(gt.category_ids)),
                                "bbox": [float(x), float(y), float(w), float(h)], "score": float(rng.random()) * 0.5})
    return predictions


def direct_coco_stats(images_dir, predictions, category_ids):
    """pycocotools run directly on ground truth built here from the YOLO label files (a second, independent reader)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {"images": [], "annotations": [], "categories": [{"id": c} for c in category_ids]}
    for image in sorted(images_dir.iterdir()):
        width, height = Image.open(image).size
        image_id = int(image.stem) if image.stem.isnumeric() else image.stem
        gt["images"].append({"id": image_id, "width": width, "height": height})
        label = images_dir.parent / "labels" / f"{image.stem}.txt"
        for row in label.read_text().split("\n") if label.exists() else []:
            if row.strip():
                c, cx, cy, w, h = map(float, row.split())
                box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
                gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "iscrowd": 0,
                                          "category_id": category_ids[int(c)], "bbox": box, "area": box[2] * box[3]})
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO()
        api.dataset = gt
        api.createIndex()
        e = COCOeval(api, api.loadRes(predictions), "bbox")
        e.evaluate(), e.accumulate(), e.summarize()
    return e.stats


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--visdrone-sample", type=Path, help="folder with images/ and annotations/")
    parser.add_argument("--visdrone-annotations", type=Path, help="folder of RAW annotation .txt files")
    parser.add_argument("--coco-sample", type=Path, help="folder with images/ and labels/ (COCO val2017 in YOLO format)")
    args = parser.parse_args()
    if args.visdrone_annotations:
        report, categories, files = Report(), collections.Counter(), sorted(args.visdrone_annotations.glob("*.txt"))
        for f in files:
            objects, ignored = parse_annotation(f.read_text(encoding="utf-8-sig"), f, report)
            categories.update(c + 1 for c, *_ in objects)
            categories[0] += len(ignored)
        categories[11] = report.counts.get("others (category 11) not labelled", 0)
        print(f"{len(files)} annotation files: {sum(categories.values())} boxes, categories {dict(sorted(categories.items()))}, "
              f"problems {len(report.problems)}")
    if args.visdrone_sample:
        with tempfile.TemporaryDirectory() as tmp:
            report = convert_visdrone(args.visdrone_sample, Path(tmp) / "out")
            print(f"{args.visdrone_sample}: {report.summary()}")
            for label in sorted((Path(tmp) / "out" / "labels").glob("*.txt")):
                rows = [list(map(float, r.split()[1:])) for r in label.read_text().splitlines()]
                inside = all(0 <= cx - w / 2 + 2e-6 and cx + w / 2 <= 1 + 2e-6 and 0 <= cy - h / 2 + 2e-6 and cy + h / 2 <= 1 + 2e-6 for cx, cy, w, h in rows)
                print(f"  {label.name}: {len(rows)} labels, all inside the image: {inside}")
            gt = load_ground_truth(Path(tmp) / "out" / "data.yaml")
            predictions = constructed_predictions(gt, np.random.default_rng(0))
            for image_id, regions in gt.ignored.items():  # confident false positives inside the ignored regions
                predictions += [{"image_id": image_id, "category_id": 1, "bbox": list(r), "score": 0.99} for r in regions]
            for protocol in ("coco", "visdrone"):
                m = evaluate(gt, predictions, protocol)
                print(f"  constructed predictions, {protocol} protocol: " + ", ".join(f"{k} {format_metric(v)}" for k, v in m.items() if k != "per_class"))
    if args.coco_sample:
        with tempfile.TemporaryDirectory() as tmp:
            yaml = Path(tmp) / "data.yaml"
            names = (args.coco_sample / "data.yaml").read_text().split("names:")[1]
            yaml.write_text(f"path: {args.coco_sample.resolve()}\ntrain: images\nval: images\nnames:{names}")
            gt = load_ground_truth(yaml)
            predictions = constructed_predictions(gt, np.random.default_rng(0))
            ours = evaluate(gt, predictions, "coco")
            direct = direct_coco_stats(args.coco_sample / "images", predictions, gt.category_ids)
            keys = [k for k in ours if k != "per_class"]
            diff = max(abs(ours[k] - d) for k, d in zip(keys, direct) if ours[k] is not None)
            undefined = [k for k, d in zip(keys, direct) if d == -1]  # pycocotools' "undefined"
            print(f"{args.coco_sample}: {len(gt.coco['images'])} images, {len(gt.coco['annotations'])} boxes, "
                  f"{len(predictions)} constructed detections")
            print("  ema-yolo coco protocol: " + ", ".join(f"{k} {format_metric(ours[k])}" for k in keys))
            print(f"  pycocotools run directly: largest difference over the defined figures = {diff:.2e}; undefined "
                  f"there {undefined}, None here {[k for k in keys if ours[k] is None]}")


if __name__ == "__main__":
    main()
