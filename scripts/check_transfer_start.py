"""Does the random start of inserted EMA layers cost a transferred model accuracy? Measure it, baseline vs EMA.

A stock yolov8n (trained here with `--stock-epochs`, or given with `--stock`) is transferred into yolov8n-ema with the
default initialisation and with the opt-in near-identity start (EMA_YOLO_INIT=identity), validated before any
fine-tuning, then each of the three is fine-tuned for `--epochs` with the same settings and validated again.
mAP50-95 is Ultralytics' validator's (COCO-style, 101-point). Prints a markdown table and writes it to OUT/table.md.

usage: python scripts/check_transfer_start.py --data DATA.yaml --out DIR [--stock PT | --stock-epochs N]
       [--epochs 3] [--imgsz 320] [--batch 16] [--optimizer AdamW --lr0 0.002 --ft-lr0 0.0005]
"""

import argparse
import csv
import os
from pathlib import Path

from ema_yolo.integration.offline import prepare_offline
from ema_yolo.integration.transfer import INIT_ENV


def _settings(args):
    return dict(data=str(args.data), imgsz=args.imgsz, batch=args.batch, device="cpu", workers=2, amp=False, seed=0,
                deterministic=True, plots=False, verbose=False, exist_ok=True, project=str(args.out.resolve()),
                optimizer=args.optimizer, lr0=args.lr0)


def _val(model, args):
    metrics = model.val(data=str(args.data), imgsz=args.imgsz, batch=args.batch, device="cpu", plots=False,
                        verbose=False, project=str(args.out.resolve()), name="val", exist_ok=True)
    return metrics.box.map


def _last_epoch_map(run):
    with open(run / "results.csv") as f:
        return float(list(csv.DictReader(f))[-1]["metrics/mAP50-95(B)"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stock", type=Path, help="stock yolov8n checkpoint (default: train one with --stock-epochs)")
    parser.add_argument("--stock-epochs", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs per variant")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--optimizer", default="AdamW", help="for every run (Ultralytics' 'auto' picks lr 1e-4 on small sets)")
    parser.add_argument("--lr0", type=float, default=0.002, help="learning rate of the stock training")
    parser.add_argument("--ft-lr0", type=float, default=0.0005, help="learning rate of fine-tuning (no warm-up)")
    args = parser.parse_args()
    prepare_offline()
    from ultralytics import YOLO
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.nn.tasks import DetectionModel

    args.out.mkdir(parents=True, exist_ok=True)
    if args.stock is None:  # trained from scratch on the same data, standing in for a stock COCO checkpoint
        YOLO("yolov8n.yaml").train(**_settings(args), epochs=args.stock_epochs, name="stock")
        args.stock = args.out / "stock" / "weights" / "last.pt"
    variants = {"yolov8n (stock)": ("yolov8n.yaml", "default"), "yolov8n-ema, default start": ("yolov8n-ema.yaml", "default"),
                "yolov8n-ema, near-identity start": ("yolov8n-ema.yaml", "identity")}
    nc = len(check_det_dataset(str(args.data))["names"])
    rows = []
    for i, (label, (cfg, init)) in enumerate(variants.items()):
        os.environ[INIT_ENV] = init
        model = YOLO(cfg)
        model.model = DetectionModel(cfg, nc=nc, verbose=False)  # the data's class count, as training builds it
        before = _val(model.load(str(args.stock)), args)
        YOLO(cfg).train(**{**_settings(args), "lr0": args.ft_lr0}, epochs=args.epochs, warmup_epochs=0,
                        pretrained=str(args.stock.resolve()), name=f"ft{i}")
        rows.append((label, before, _last_epoch_map(args.out / f"ft{i}")))
    lines = [f"| model | mAP50-95 before fine-tuning | after {args.epochs} epochs |", "|---|---|---|"]
    lines += [f"| {label} | {before:.4f} | {after:.4f} |" for label, before, after in rows]
    table = "\n".join(lines)
    (args.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
