"""`ema-yolo compare`: its parser and handler."""

from __future__ import annotations

import argparse

from ..cli_format import HelpFormatter
from . import compare as compare_module
from .compare import run_compare
from .variants import FAMILIES, VARIANTS, variant_cfg

__all__ = ("main",)


def main(argv: list[str] | None = None) -> int:
    """`ema-yolo compare`."""
    parser = argparse.ArgumentParser(prog="ema-yolo compare", description=compare_module.__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--data", help="dataset YAML (not needed with --no-train)")
    parser.add_argument("--family", choices=FAMILIES, default="yolov8", help="model family")
    parser.add_argument("--scale", choices=list("nsmlx"), default="n", help="model scale")
    parser.add_argument("--variants", default="baseline,ema", help=f"comma-separated, from {','.join(VARIANTS)}")
    parser.add_argument("--out", required=True, help="run folder (re-run the same command to resume)")
    parser.add_argument("--epochs", type=int, default=100, help="training epochs")
    parser.add_argument("--imgsz", type=int, default=640, help="train, eval and latency size")
    parser.add_argument("--batch", type=int, default=16, help="training batch")
    parser.add_argument("--device", default="cpu", help="cpu, 0, 0,1, ...")
    parser.add_argument("--seed", type=int, default=0, help="training seed, the same for every variant")
    parser.add_argument("--workers", type=int, default=8, help="data loader workers")
    parser.add_argument("--protocol", choices=["coco", "visdrone"], default="coco", help="evaluation protocol (see ema-yolo eval -h)")
    parser.add_argument("--pretrained", metavar="PT", help="stock checkpoint every variant starts from (e.g. yolov8s.pt)")
    parser.add_argument("--no-train", action="store_true", help="only params, GFLOPs and latency")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
        try:
            variant_cfg(args.family, args.scale, v)
        except ValueError as e:
            parser.error(str(e))
    if not args.no_train and not args.data:
        parser.error("--data is required unless --no-train")
    run_compare(args.data, args.family, args.scale, variants, args.out, args.epochs, args.imgsz, args.batch,
                args.device, args.seed, args.protocol, args.workers, args.pretrained, not args.no_train)
    return 0
