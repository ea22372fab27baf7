"""Time the paired bootstrap (`ema_yolo.eval.bootstrap`) on generated predictions: one evaluation, then resamples.

The set (issue #24): 5,000 images, 80 classes, 100 detections per image (scores rounded to 5 decimals, as
`yolo val save_json=True` writes them), COCO-sized ground truth (1-14 objects per image, sizes spanning the
small/medium/large ranges). Two runs, baseline and variant, differ in their detections' noise; the bootstrap
compares them over `--resamples` resamples under the `coco` protocol.

    python scripts/bench_bootstrap.py                 # the issue's benchmark
    python scripts/bench_bootstrap.py --images 500    # a quick look
"""

import argparse
import os
import sys
import time

import numpy as np


def generate(rng, n_images, n_classes, n_dets, noise):
    """A ground-truth COCO dict and `save_json`-format predictions of one run."""
    coco = {"images": [], "annotations": [], "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(n_classes)]}
    predictions = []
    for i in range(n_images):
        coco["images"].append({"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480})
        n_gt = int(rng.integers(1, 15))
        size = np.exp(rng.uniform(np.log(8), np.log(300), (n_gt, 2)))  # small, medium and large objects
        xy = rng.uniform(0, 1, (n_gt, 2)) * np.maximum(1, [640, 480] - size)
        classes = rng.integers(0, n_classes, n_gt)
        for c, (x, y), (w, h) in zip(classes, xy, size):
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "category_id": int(c) + 1,
                                        "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h),
                                        "iscrowd": 0})
        near = rng.integers(0, n_gt, n_dets // 3)  # a third near an object, the rest anywhere
        boxes = np.concatenate([np.column_stack([xy[near], size[near]]) * rng.normal(1, noise, (len(near), 4)),
                                np.column_stack([rng.uniform(0, 600, (n_dets - len(near), 2)),
                                                 rng.uniform(4, 200, (n_dets - len(near), 2))])])
        labels = np.concatenate([np.where(rng.random(len(near)) < 0.8, classes[near], rng.integers(0, n_classes, len(near))),
                                 rng.integers(0, n_classes, n_dets - len(near))])
        scores = np.concatenate([rng.uniform(0.2, 1, len(near)), rng.uniform(0.001, 0.6, n_dets - len(near))])
        for box, c, s in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
            predictions.append({"image_id": i, "category_id": c + 1, "bbox": [box[0], box[1], max(1.0, box[2]), max(1.0, box[3])],
                                "score": round(s, 5)})
    return coco, predictions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()

    from tqdm import tqdm

    from ema_yolo.eval.bootstrap import match, paired_bootstrap, resample_weights
    from ema_yolo.eval.protocols import GroundTruth

    rng = np.random.default_rng(0)
    coco, baseline = generate(rng, args.images, args.classes, args.dets, noise=0.10)
    variant_coco, variant = generate(np.random.default_rng(0), args.images, args.classes, args.dets, noise=0.08)
    assert variant_coco == coco  # same images and ground truth, other detections
    gt = GroundTruth(coco, {}, {c: f"c{c}" for c in range(args.classes)}, list(range(1, args.classes + 1)))
    print(f"{args.images} images, {args.classes} classes, {len(baseline)} + {len(variant)} detections, "
          f"{len(coco['annotations'])} objects; {os.cpu_count()} CPUs visible, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    timings = []
    runs = []
    for predictions in (baseline, variant):
        start = time.perf_counter()
        runs.append(match(gt, predictions, "coco"))
        timings.append(time.perf_counter() - start)
    calls = []
    for weights in resample_weights(args.images, 5, seed=1):
        start = time.perf_counter()
        runs[0].metrics(weights)
        calls.append(time.perf_counter() - start)
    one = float(np.median(calls))
    with tqdm(total=args.resamples, desc="resamples", file=sys.stderr) as bar:
        start = time.perf_counter()
        result = paired_bootstrap([runs[0]], [runs[1]], args.resamples, progress=lambda i: bar.update())
        elapsed = time.perf_counter() - start
    print(f"evaluate once (pycocotools evaluate() + arrays + ranking): {timings[0]:.1f} s and {timings[1]:.1f} s per run")
    print(f"metrics of one run under one resample's weights: {one * 1000:.0f} ms (median of 5)")
    print(f"paired bootstrap, {args.resamples} resamples x 2 runs: {elapsed:.1f} s "
          f"({elapsed / args.resamples * 1000:.0f} ms per resample)")
    for key in ("AP", "AP50", "APs", "AR100"):
        r = result[key]
        print(f"  {key}: variant - baseline {r['mean']:+.4f}, 95% interval [{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}]")


if __name__ == "__main__":
    main()
