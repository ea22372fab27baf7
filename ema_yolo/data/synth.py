"""Generated detection datasets, written in each raw format (VisDrone RAW, COCO JSON, YOLO), deterministic by seed.

Many small objects (squares, discs, triangles in class-specific colours) on textured backgrounds: enough signal that
a detector learns in minutes on a CPU, and every converter and evaluator runs end to end without a download.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

__all__ = (
    "CLASSES", "KEYPOINTS", "TASKS", "make_coco_raw", "make_scene", "make_task_dataset", "make_visdrone_raw",
    "make_yolo_dataset",
)  # fmt: skip

CLASSES = ("square", "disc", "triangle")
COCO_SUBSET = {1: "person", 3: "car", 44: "bottle"}  # standard COCO ids and names used by the coco generator
TASKS = ("detect", "segment", "pose", "obb", "classify")  # Ultralytics' task names
KEYPOINTS = ("top", "bottom-left", "bottom-right")  # pose: three points of each object's box, kpt_shape [3, 3]


def _draw(image, shape, box, color):
    """Draw shape 0 (square), 1 (disc) or 2 (triangle) filling pixel box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    if shape == 0:
        cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), color, -1)
    elif shape == 1:
        cv2.ellipse(image, (((x0 + x1) / 2, (y0 + y1) / 2), (x1 - x0, y1 - y0), 0), color, -1)
    else:
        cv2.fillPoly(image, [np.array([[x0, y1 - 1], [(x0 + x1) // 2, y0], [x1 - 1, y1 - 1]], np.int32)], color)


def _background(rng, width, height):
    """A dark blurred-noise texture (BGR)."""
    return cv2.GaussianBlur(rng.integers(0, 90, (height, width, 3), dtype=np.uint8), (5, 5), 0)


def make_scene(rng: np.random.Generator, width: int, height: int, n_classes: int = 3, max_objects: int = 8,
               min_side: int = 10, max_side: int = 28, overhang: bool = False) -> tuple[np.ndarray, list]:
    """Return (BGR image, objects) with objects as (class, left, top, width, height) pixel boxes, not overlapping.

    Class c is drawn as shape c % 3 in a colour band of its own. With `overhang`, some boxes run past the image edge
    (as truncated objects do in VisDrone); the objects are then returned unclipped.
    """
    image = _background(rng, width, height)
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


def make_yolo_dataset(dst: str | Path, train: int = 160, val: int = 32, size: int = 160, seed: int = 0) -> Path:
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


def make_visdrone_raw(dst: str | Path, images: int = 8, seed: int = 0, width: int = 256, height: int = 192) -> Path:
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


def make_coco_raw(dst: str | Path, images: int = 8, seed: int = 0, width: int = 224, height: int = 160,
                  categories: list[dict] | None = None) -> Path:
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


def _outline(shape, box):
    """Polygon (N, 2) of shape 0 (square), 1 (disc) or 2 (triangle) as `_draw` fills box (x0, y0, x1, y1).

    In image coordinates (pixel i spans [i, i + 1]), where OpenCV's drawing coordinates are pixel centres.
    """
    x0, y0, x1, y1 = box
    if shape == 0:
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)
    if shape == 1:
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        return np.stack([(x0 + x1 + 1) / 2 + (x1 - x0) / 2 * np.cos(t), (y0 + y1 + 1) / 2 + (y1 - y0) / 2 * np.sin(t)], 1)
    return np.array([[x0, y1], [(x0 + x1) // 2 + 0.5, y0], [x1, y1]], float)


def _obb_scene(rng, size, n_classes=3, max_objects=4):
    """Return (BGR image, objects) with rotated rectangles: objects as (class, 4x2 corner pixels), not overlapping.

    Class c has aspect ratio 1.5 + c and a colour band of its own; the angle is uniform, so orientation must be learnt.
    """
    image = _background(rng, size, size)
    taken, objects = np.zeros((size, size), np.uint8), []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls, long = int(rng.integers(0, n_classes)), float(rng.uniform(0.25, 0.45) * size)
        short, angle = long / (1.5 + cls), float(rng.uniform(0, 180))
        half = int(np.ceil(np.hypot(long, short) / 2))
        cx, cy = (int(rng.integers(half, size - half)) for _ in range(2))
        corners = cv2.boxPoints(((cx, cy), (long, short), angle))
        mask = cv2.fillPoly(np.zeros_like(taken), [np.round(corners).astype(np.int32)], 1)
        if (mask & taken).any():
            continue
        taken |= mask
        color = (int(120 + 135 * (cls % 3 == 0)), int(120 + 135 * (cls % 3 == 1)), int(120 + 120 * (cls / n_classes)))
        cv2.fillPoly(image, [np.round(corners).astype(np.int32)], color)
        objects.append((cls, corners))
    return image, objects


def _label_rows(task, rng, size):
    """One generated image of `task` and its YOLO label rows (Ultralytics' dataset formats, normalised to `size`)."""
    if task == "obb":  # class x1 y1 x2 y2 x3 y3 x4 y4
        image, objects = _obb_scene(rng, size)
        return image, [f"{c} " + " ".join(f"{v / size:.6f}" for v in np.clip(p, 0, size).ravel()) for c, p in objects]
    image, objects = make_scene(rng, size, size, min_side=max(size // 8, 6), max_side=max(size // 3, 8), max_objects=4)
    rows = []
    for c, x, y, w, h in objects:
        if task == "segment":  # class x1 y1 ... xn yn: the drawn shape's outline
            points = _outline(c % 3, (x, y, x + w, y + h)) / size
            rows.append(f"{c} " + " ".join(f"{v:.6f}" for v in points.ravel()))
            continue
        row = f"{c} {(x + w / 2) / size:.6f} {(y + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}"
        if task == "pose":  # box, then x y visibility of each keypoint (KEYPOINTS)
            row += "".join(f" {px / size:.6f} {py / size:.6f} 2" for px, py in ((x + w / 2, y), (x, y + h), (x + w, y + h)))
        rows.append(row)
    return image, rows


def make_task_dataset(dst: str | Path, task: str, train: int = 8, val: int = 4, size: int = 64, seed: int = 0) -> Path:
    """Write a small generated dataset for Ultralytics task `task` under `dst`, deterministic by `seed`.

    Formats (https://docs.ultralytics.com/datasets/): `detect` boxes, `segment` polygons (each shape's outline),
    `pose` boxes with three keypoints (`KEYPOINTS`: the box's top centre, bottom-left and bottom-right corners, all
    visible; `kpt_shape: [3, 3]`, `flip_idx: [0, 2, 1]`), `obb` four corners of rotated rectangles (aspect ratio by
    class), all in `images/{train,val}` + `labels/{train,val}` with a `data.yaml`; `classify` one shape per image in
    `{train,val}/<class name>/` folders (ImageNet layout).

    Args:
        dst (str | Path): Output folder.
        task (str): One of `TASKS`.
        train, val (int): Images per split (classify: per class).
        size (int): Image side in pixels.
        seed (int): Random seed.

    Returns:
        (Path): The dataset YAML, or for `classify` the dataset folder (what Ultralytics' `data=` takes).

    Raises:
        ValueError: If `task` is not one of `TASKS`.

    Example:
        >>> make_task_dataset("/tmp/seg", "segment").name
        'data.yaml'
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if task == "detect":
        return make_yolo_dataset(dst, train, val, size, seed)
    dst, rng = Path(dst), np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for i in range(count * (len(CLASSES) if task == "classify" else 1)):
            if task == "classify":
                cls, side = i % len(CLASSES), int(rng.integers(size // 3, size * 3 // 4))
                image = _background(rng, size, size)
                x0, y0 = (int(rng.integers(0, size - side)) for _ in range(2))
                color = (int(120 + 135 * (cls == 0)), int(120 + 135 * (cls == 1)), int(120 + 120 * cls / len(CLASSES)))
                _draw(image, cls, (x0, y0, x0 + side, y0 + side), color)
                (dst / split / CLASSES[cls]).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(dst / split / CLASSES[cls] / f"{i:05d}.png"), image)
                continue
            image, rows = _label_rows(task, rng, size)
            (dst / "images" / split).mkdir(parents=True, exist_ok=True)
            (dst / "labels" / split).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(dst / "images" / split / f"{i:05d}.png"), image)
            (dst / "labels" / split / f"{i:05d}.txt").write_text("".join(r + "\n" for r in rows))
    if task == "classify":
        return dst
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASSES))
    extra = "kpt_shape: [3, 3]\nflip_idx: [0, 2, 1]\n" if task == "pose" else ""
    yaml_path = dst / "data.yaml"
    yaml_path.write_text(f"path: {dst.resolve()}\ntrain: images/train\nval: images/val\n{extra}names:\n{names}")
    return yaml_path
