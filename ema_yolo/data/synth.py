"""Generated detection datasets, written in each raw format (VisDrone RAW, COCO JSON, YOLO), deterministic by seed.

Many small objects (squares, discs, triangles in class-specific colours) on textured backgrounds: enough signal that
a detector learns in minutes on a CPU, and every converter and evaluator runs end to end without a download.
"""

import json
from pathlib import Path

import cv2
import numpy as np

__all__ = ("CLASSES", "make_coco_raw", "make_scene", "make_visdrone_raw", "make_yolo_dataset")

CLASSES = ("square", "disc", "triangle")
COCO_SUBSET = {1: "person", 3: "car", 44: "bottle"}  # standard COCO ids and names used by the coco generator


def _draw(image, shape, box, color):
    """Draw shape 0 (square), 1 (disc) or 2 (triangle) filling pixel box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    if shape == 0:
        cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), color, -1)
    elif shape == 1:
        cv2.ellipse(image, (((x0 + x1) / 2, (y0 + y1) / 2), (x1 - x0, y1 - y0), 0), color, -1)
    else:
        cv2.fillPoly(image, [np.array([[x0, y1 - 1], [(x0 + x1) // 2, y0], [x1 - 1, y1 - 1]], np.int32)], color)


def make_scene(rng, width, height, n_classes=3, max_objects=8, min_side=10, max_side=28, overhang=False):
    """Return (BGR image, objects) with objects as (class, left, top, width, height) pixel boxes, not overlapping.

    Class c is drawn as shape c % 3 in a colour band of its own. With `overhang`, some boxes run past the image edge
    (as truncated objects do in VisDrone); the objects are then returned unclipped.
    """
    image = cv2.GaussianBlur(rng.integers(0, 90, (height, width, 3), dtype=np.uint8), (5, 5), 0)
    taken, objects = np.zeros((height, width), bool), []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        side = int(rng.integers(min_side, max_side))
        low = -side // 2 if overhang else 0
        x0 = int(rng.integers(low, width - side - low))
        y0 = int(rng.integers(low, height - side - low))
        region = taken[max(y0, 0) : max(y0 + side, 0), max(x0, 0) : max(x0 + side, 0)]
        if region.size == 0 or region.any():
            continue
        region[:] = True
        cls = int(rng.integers(0, n_classes))
        color = (int(120 + 135 * (cls % 3 == 0)), int(120 + 135 * (cls % 3 == 1)), int(120 + 120 * (cls / n_classes)))
        _draw(image, cls % 3, (x0, y0, x0 + side, y0 + side), color)
        objects.append((cls, x0, y0, side, side))
    return image, objects


def make_yolo_dataset(dst, train=160, val=32, size=160, seed=0):
    """Write a YOLO-layout dataset (`images/{train,val}`, `labels/{train,val}`, `data.yaml`) under `dst`.

    Returns:
        (Path): The dataset YAML.
    """
    dst, rng = Path(dst), np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        (dst / "images" / split).mkdir(parents=True, exist_ok=True)
        (dst / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, objects = make_scene(rng, size, size)
            cv2.imwrite(str(dst / "images" / split / f"{i:05d}.png"), image)
            rows = [f"{c} {(x + w / 2) / size:.6f} {(y + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}" for c, x, y, w, h in objects]
            (dst / "labels" / split / f"{i:05d}.txt").write_text("".join(r + "\n" for r in rows))
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASSES))
    yaml_path = dst / "data.yaml"
    yaml_path.write_text(f"path: {dst.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return yaml_path


def make_visdrone_raw(dst, images=8, seed=0, width=256, height=192):
    """Write a VisDrone2019-DET-style split: `images/*.jpg` and RAW `annotations/*.txt`.

    Each file holds the objects (categories 1-10, random truncation/occlusion, some running past the image edge),
    one or two ignored regions (category 0, score 0) and sometimes an 'others' box (category 11).

    Returns:
        (dict): Ground truth per stem: {'size': (w, h), 'objects': [(class 0-9, l, t, w, h)], 'ignored': [(l, t, w, h)]}.
    """
    dst, rng, truth = Path(dst), np.random.default_rng(seed), {}
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "annotations").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        stem = f"{i:07d}_00000_d_{i:07d}"
        image, objects = make_scene(rng, width, height, n_classes=10, max_objects=14, min_side=6, max_side=22, overhang=True)
        lines = [f"{x},{y},{w},{h},1,{c + 1},{int(x < 0 or y < 0 or x + w > width or y + h > height)},{int(rng.integers(0, 3))}" for c, x, y, w, h in objects]
        ignored = [(int(rng.integers(0, width - 40)), int(rng.integers(0, height - 30)), 40, 30) for _ in range(int(rng.integers(1, 3)))]
        lines += [f"{x},{y},{w},{h},0,0,0,0" for x, y, w, h in ignored]
        if i % 3 == 0:
            lines.append("5,5,12,12,1,11,0,0")  # 'others': not a label
        order = rng.permutation(len(lines))
        (dst / "annotations" / f"{stem}.txt").write_text("\n".join(lines[j] for j in order) + "\n")
        cv2.imwrite(str(dst / "images" / f"{stem}.jpg"), image)
        truth[stem] = {"size": (width, height), "objects": objects, "ignored": ignored}
    return truth


def make_coco_raw(dst, images=8, seed=0, width=224, height=160, categories=None):
    """Write a COCO-format set: `images/*.jpg` and `annotations.json` (with one crowd box in some images).

    Args:
        categories (dict, optional): {category id: name}; default three standard COCO categories. Ids may be any
            integers in any order (custom COCO-format files).

    Returns:
        (dict): Ground truth per file stem: {'size', 'objects': [(category id, l, t, w, h)], 'crowd': [...]}.
    """
    categories = categories or COCO_SUBSET
    ids = list(categories)
    dst, rng, truth = Path(dst), np.random.default_rng(seed), {}
    (dst / "images").mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": k, "name": v} for k, v in categories.items()]}
    for i in range(images):
        image, objects = make_scene(rng, width, height, n_classes=len(ids))
        name = f"{100 + i:012d}.jpg"
        cv2.imwrite(str(dst / "images" / name), image)
        coco["images"].append({"id": 100 + i, "file_name": name, "width": width, "height": height})
        objects = [(ids[c], x, y, w, h) for c, x, y, w, h in objects]
        crowd = [(0, 0, 30, 20)] if i % 2 else []
        for cid, x, y, w, h in objects:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": 100 + i, "category_id": cid,
                                        "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        for x, y, w, h in crowd:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": 100 + i, "category_id": ids[0],
                                        "bbox": [x, y, w, h], "area": w * h, "iscrowd": 1})
        truth[Path(name).stem] = {"size": (width, height), "objects": objects, "crowd": crowd}
    (dst / "annotations.json").write_text(json.dumps(coco))
    return truth
