"""Does a real detector survive the insertion of attention layers, and does the start matter after fine-tuning?

A real stock checkpoint (e.g. a trained YOLOv8s) is loaded, the way `pretrained=` loads it, into yolov8s and its
-ema, -cbam, -ca, -se and -c2f-ema models, with the function-preserving start (the default) and with the published
initialisation (`EMA_YOLO_START=published`). Three measurements, printed as markdown and written to OUT/tables.md:

1. Step 0 on real photos (`--photos`, the first 24, 640 px): the stock network's boxes (conf 0.25, NMS IoU 0.45) that
   the model keeps (a box of the same class with IoU > 0.5), and the median over images of max|a - b| / max|a| over
   the raw head outputs (box distributions and class logits).
2. Fine-tuning on the person boxes of a COCO sample in YOLO format (`--coco`: class 0 kept as class 0, the rest
   dropped; the first 48 images train, the last 16 validate, 320 px): mAP50-95 (Ultralytics' validator) before and
   after `--epochs` epochs (AdamW, lr0 0.0005, no warm-up, no mosaic, seed 0), and the relative change of the
   attention parameters, ||after - before|| / ||before|| (before: the start, so a zeroed tensor counts its norm).
3. Gradient norms of each new layer's parameters next to the convolution before it, at the first step and at step
   `--grad-steps` of a fine-tune of the -ema model with each start.

usage: python scripts/check_transfer_start.py --checkpoint fall-yolov8s.pt --photos COCO/images --coco COCO --out DIR
"""

import argparse
import os
import statistics
from pathlib import Path

import torch

from ema_yolo.integration.offline import prepare_offline
from ema_yolo.integration.start import START_ENV

VARIANTS = ("yolov8s", "yolov8s-ema", "yolov8s-cbam", "yolov8s-ca", "yolov8s-se", "yolov8s-c2f-ema")
STARTS = ("function-preserving", "published")


def _load(cfg, checkpoint, start):
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    os.environ[START_ENV] = start
    source = load_checkpoint(checkpoint)[0]
    model = DetectionModel(f"{cfg}.yaml", nc=len(source.names), verbose=False)
    model.load(source, verbose=False)
    model.names = dict(source.names)
    return model.eval()


def _boxes_and_raw(model, images):
    from ultralytics.utils.nms import non_max_suppression

    out = []
    with torch.no_grad():
        for x in images:
            y, raw = model(x)
            det = non_max_suppression(y, conf_thres=0.25, iou_thres=0.45)[0]
            out.append((det, torch.cat((raw["boxes"].flatten(), raw["scores"].flatten()))))
    return out


def _letterboxed(paths, size):
    import cv2
    from ultralytics.data.augment import LetterBox

    box = LetterBox((size, size), auto=True, stride=32)  # as Ultralytics' predictor pads: to a multiple of 32
    images = []
    for p in paths:
        im = box(image=cv2.imread(str(p)))[:, :, ::-1].copy()
        images.append(torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255)
    return images


def step0_table(checkpoint, photos, size=640):
    from ultralytics.utils.metrics import box_iou

    images = _letterboxed(sorted(Path(photos).glob("*.jpg"))[:24], size)
    reference = _boxes_and_raw(_load("yolov8s", checkpoint, STARTS[0]), images)
    total = sum(len(d) for d, _ in reference)
    rows = ["| model | start | stock boxes kept at step 0 | median raw output difference |", "|---|---|---|---|"]
    for cfg in VARIANTS:
        for start in STARTS[: 1 if cfg == "yolov8s" else 2]:
            kept, diffs = 0, []
            for (ref, ref_raw), (det, raw) in zip(reference, _boxes_and_raw(_load(cfg, checkpoint, start), images)):
                diffs.append(float((raw - ref_raw).abs().max() / ref_raw.abs().max()))
                if len(ref) and len(det):
                    iou = box_iou(ref[:, :4], det[:, :4]) * (ref[:, None, 5] == det[None, :, 5])
                    kept += int((iou.max(1).values > 0.5).sum())
            rows.append(f"| {cfg}.yaml | {start if cfg != 'yolov8s' else 'control'} | {kept}/{total} | "
                        f"{statistics.median(diffs):.3g} |")
            print(rows[-1], flush=True)
    return "\n".join(rows)


def person_dataset(coco, out, names):
    """The COCO sample's person boxes as class 0 of the checkpoint's classes: 48 train, 16 val images."""
    images = sorted((Path(coco) / "images").glob("*.jpg"))
    for split, part in (("train", images[:48]), ("val", images[48:64])):
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "labels").mkdir(parents=True, exist_ok=True)
        for im in part:
            link = out / split / "images" / im.name
            if not link.exists():
                link.symlink_to(im.resolve())
            label = Path(coco) / "labels" / f"{im.stem}.txt"
            rows = [r for r in (label.read_text().splitlines() if label.exists() else []) if r.split()[:1] == ["0"]]
            (out / split / "labels" / f"{im.stem}.txt").write_text("".join(r + "\n" for r in rows))
    names_yaml = "".join(f"  {i}: {n}\n" for i, n in names.items())
    (out / "data.yaml").write_text(f"path: {out.resolve()}\ntrain: train/images\nval: val/images\nnames:\n{names_yaml}")
    return out / "data.yaml"


def _attention(model):
    """Attention module name -> its parameters (rows such as model.7, and in-block ones such as model.2.m.0.attn)."""
    from ema_yolo.nn import ATTENTION_LAYERS

    names = [n for n, m in model.named_modules() if isinstance(m, tuple(ATTENTION_LAYERS.values()))]
    return {n: dict(model.get_submodule(n).named_parameters()) for n in names}


def _previous_conv(model, name):
    """The convolution whose output the attention module `name` reads (its bottleneck's cv2, or the layer before)."""
    parts = name.split(".")
    if parts[-1] == "attn":
        return model.get_submodule(".".join(parts[:-1])).cv2.conv
    return [m for m in model.model[int(parts[1]) - 1].modules() if isinstance(m, torch.nn.Conv2d)][-1]


def _norm(tensors):
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors])))


def finetune(cfg, start, checkpoint, data, out, epochs, name):
    """Fine-tune; return (mAP50-95 at step 0, after, relative change per attention module, grad norms by step)."""
    import csv

    from ultralytics import YOLO

    os.environ[START_ENV] = start
    state, grads, squares = {"step": 0}, {}, {}

    def on_train_start(trainer):
        attention = _attention(trainer.model)
        state["before"] = {n: {k: p.detach().clone() for k, p in ps.items()} for n, ps in attention.items()}
        watched = {n: list(ps.values()) for n, ps in attention.items()}
        watched.update({f"{n} (conv before)": [_previous_conv(trainer.model, n).weight] for n in attention})
        for key, params in watched.items():
            for p in params:  # each batch is one optimiser step (nbs = batch); the hook sees that batch's gradient
                p.register_hook(lambda g, key=key: squares.__setitem__(key, squares.get(key, 0.0) + float(g.square().sum())))

    def on_train_batch_end(trainer):
        state["step"] += 1
        if state["step"] in (1, 100):
            grads[state["step"]] = {k: v**0.5 for k, v in squares.items()}
        squares.clear()

    step0 = YOLO(f"{cfg}.yaml")
    step0.model = _load(cfg, checkpoint, start)
    before = step0.val(data=str(data), imgsz=320, batch=8, device="cpu", plots=False, verbose=False,
                       project=str(out), name=f"{name}-step0", exist_ok=True).box.map
    model = YOLO(f"{cfg}.yaml")
    model.add_callback("on_train_start", on_train_start)
    model.add_callback("on_train_batch_end", on_train_batch_end)
    model.train(data=str(data), imgsz=320, batch=8, nbs=8, device="cpu", workers=2, amp=False, seed=0,
                deterministic=True, plots=False, verbose=False, exist_ok=True, project=str(out), optimizer="AdamW",
                lr0=0.0005, warmup_epochs=0, mosaic=0.0, close_mosaic=0, epochs=epochs, pretrained=str(checkpoint),
                name=name, val=True)
    with open(out / name / "results.csv") as f:
        after = float(list(csv.DictReader(f))[-1]["metrics/mAP50-95(B)"])
    change = {}
    for n, params in _attention(model.trainer.model).items():
        delta = _norm([p.detach() - state["before"][n][k] for k, p in params.items()])
        change[n] = delta / max(_norm(list(state["before"][n].values())), 1e-12)
    return before, after, change, grads


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a real trained stock YOLOv8s checkpoint")
    parser.add_argument("--photos", type=Path, required=True, help="folder of real photos (the first 24 are used)")
    parser.add_argument("--coco", type=Path, required=True, help="COCO sample in YOLO format (images/, labels/)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs per variant")
    parser.add_argument("--grad-epochs", type=int, default=17, help="epochs of the gradient-norm runs (6 steps each)")
    parser.add_argument("--parts", default="step0,finetune,grads")
    args = parser.parse_args()
    prepare_offline()
    from ultralytics.nn.tasks import load_checkpoint

    args.out.mkdir(parents=True, exist_ok=True)
    parts, tables = args.parts.split(","), []
    if "step0" in parts:
        tables.append(step0_table(args.checkpoint, args.photos))
    data = person_dataset(args.coco, args.out / "data", load_checkpoint(args.checkpoint)[0].names)
    if "finetune" in parts:
        rows = [f"| model | start | mAP50-95 at step 0 | after {args.epochs} epochs | attention change (relative) |",
                "|---|---|---|---|---|"]
        for cfg in VARIANTS:
            for start in STARTS[: 1 if cfg == "yolov8s" else 2]:
                before, after, change, _ = finetune(cfg, start, args.checkpoint, data, args.out, args.epochs,
                                                    f"{cfg}-{start}")
                values = list(change.values())
                moved = (", ".join(f"{k} {v:.2f}" for k, v in change.items()) if len(values) <= 2 else
                         f"{len(values)} modules, {min(values):.2f}-{max(values):.2f}") if values else "-"
                rows.append(f"| {cfg}.yaml | {start if cfg != 'yolov8s' else '-'} | {before:.4f} | {after:.4f} | {moved} |")
                print(rows[-1], flush=True)
        tables.append("\n".join(rows))
    if "grads" in parts:
        rows = ["| start | layer | grad norm, step 1 | step 100 |", "|---|---|---|---|"]
        for start in STARTS:
            *_, grads = finetune("yolov8s-ema", start, args.checkpoint, data, args.out, args.grad_epochs, f"grads-{start}")
            for k in grads.get(1, {}):
                rows.append(f"| {start} | {k} | {grads[1][k]:.3g} | {grads.get(100, {}).get(k, float('nan')):.3g} |")
                print(rows[-1], flush=True)
        tables.append("\n".join(rows))
    (args.out / "tables.md").write_text("\n\n".join(tables) + "\n")
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
