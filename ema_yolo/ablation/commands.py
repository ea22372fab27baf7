"""`ema-yolo compare`: its parser and handler."""

from __future__ import annotations

import argparse
import sys

from ..cli_format import HelpFormatter
from ..eval.protocols import EvalError
from ..models import ModelError
from . import compare as compare_module
from .compare import CompareError, run_compare
from .variants import FAMILIES, VARIANTS, variant_cfg

__all__ = ("main",)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers expected, not {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"distinct seeds expected, not {text!r}")
    return seeds


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
    parser.add_argument("--device", help="cpu (default), 0, 0,1, ...; under --ray each run gets its Ray-assigned GPUs")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=_seeds, help="training seeds, e.g. 0,1,2: every variant is trained once per seed")
    seeds.add_argument("--seed", type=int, help="one training seed (default 0)")
    parser.add_argument("--workers", type=int, default=8, help="data loader workers")
    parser.add_argument("--protocol", choices=["coco", "visdrone"], default="coco", help="evaluation protocol (see ema-yolo eval -h)")
    parser.add_argument("--pretrained", metavar="PT", help="stock checkpoint every variant starts from (e.g. yolov8s.pt)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the validation images")
    parser.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="run every (variant, seed) as a Ray task: on a local Ray runtime, or on the cluster at "
                             "ADDRESS; --out must be on a file system every worker shares")
    parser.add_argument("--gpus-per-run", type=float, help="GPUs of each Ray task (default 1 where CUDA is visible, else 0)")
    parser.add_argument("--cpus-per-run", type=float, help="CPUs of each Ray task (default 1; also its torch threads)")
    parser.add_argument("--threads", type=int, help="torch threads of every run and of the latency timing (default: "
                                                     "--cpus-per-run under --ray, else torch's)")
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
    if len(set(variants)) != len(variants):
        parser.error(f"a variant is listed twice: {args.variants}")
    if not args.no_train and not args.data:
        parser.error("--data is required unless --no-train")
    if args.ray and args.device:
        parser.error("--device is set per run under --ray (its Ray-assigned GPUs, or cpu); use --gpus-per-run")
    if not args.ray and (args.gpus_per_run is not None or args.cpus_per_run is not None):
        parser.error("--gpus-per-run and --cpus-per-run are Ray task resources: use them with --ray")
    if args.resamples < 1:
        parser.error("--resamples must be at least 1")
    seeds = args.seeds or [0 if args.seed is None else args.seed]
    try:
        run_compare(args.data, args.family, args.scale, variants, args.out, args.epochs, args.imgsz, args.batch,
                    args.device or "cpu", seeds, args.protocol, args.workers, args.pretrained, not args.no_train,
                    args.resamples, args.ray, args.gpus_per_run, args.cpus_per_run, args.threads)
    except (CompareError, EvalError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
