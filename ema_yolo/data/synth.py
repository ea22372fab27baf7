"""A small generated detection dataset in YOLO layout: many small objects on textured backgrounds, deterministic."""

from pathlib import Path

import cv2
import numpy as np

__all__ = ("CLASSES", "make_yolo_dataset")

CLASSES = ("square", "disc", "triangle")


def _draw(image, cls, box, color):
    """Draw object `cls` filling pixel box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    if cls == 0:
        cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), color, -1)
    elif cls == 1:
        cv2.ellipse(image, (((x0 + x1) / 2, (y0 + y1) / 2), (x1 - x0, y1 - y0), 0), color, -1)
    else:
        pts = np.array([[x0, y1 - 1], [(x0 + x1) // 2, y0], [x1 - 1, y1 - 1]], np.int32)
        cv2.fillPoly(image, [pts], color)


def make_image(rng, size=160, max_objects=8):
    """Return (BGR image, labels) with labels as rows (cls, x0, y0, x1, y1) in pixels, objects not overlapping."""
    image = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(image, (5, 5), 0)
    labels, taken = [], np.zeros((size, size), bool)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        side = int(rng.integers(10, 28))
        x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
        if taken[y0 : y0 + side, x0 : x0 + side].any():
            continue
        taken[y0 : y0 + side, x0 : x0 + side] = True
        cls = int(rng.integers(0, len(CLASSES)))
        _draw(image, cls, (x0, y0, x0 + side, y0 + side), tuple(int(c) for c in rng.integers(140, 256, 3)))
        labels.append((cls, x0, y0, x0 + side, y0 + side))
    return image, labels


def make_yolo_dataset(dst, train=160, val=32, size=160, seed=0):
    """Write a YOLO-layout dataset (`images/{train,val}`, `labels/{train,val}`, `data.yaml`) under `dst`.

    Args:
        dst (str | Path): Output folder.
        train (int): Training images.
        val (int): Validation images.
        size (int): Square image side in pixels.
        seed (int): Random seed; the same seed writes the same files.

    Returns:
        (Path): The dataset YAML.
    """
    dst = Path(dst)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        (dst / "images" / split).mkdir(parents=True, exist_ok=True)
        (dst / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, labels = make_image(rng, size)
            cv2.imwrite(str(dst / "images" / split / f"{i:05d}.png"), image)
            rows = [
                f"{c} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} {(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}"
                for c, x0, y0, x1, y1 in labels
            ]
            (dst / "labels" / split / f"{i:05d}.txt").write_text("\n".join(rows) + "\n")
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES))
    yaml_path = dst / "data.yaml"
    yaml_path.write_text(f"path: {dst.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return yaml_path
