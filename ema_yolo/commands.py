"""`ema-yolo demo`, `ema-yolo bench` and `ema-yolo yolo`: their parsers and handlers (the work: `ema_yolo.demo`,
`ema_yolo.bench`, Ultralytics' own command line)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ("bench", "demo", "yolo")


def demo(argv: list[str] | None = None) -> int:
    """`ema-yolo demo`."""
    from . import demo as demo_module

    parser = argparse.ArgumentParser(prog="ema-yolo demo", description=demo_module.__doc__)
    parser.add_argument("--out", default="runs/ema-yolo-demo", help="run folder")
    parser.add_argument("--model", default="yolov8n-ema.yaml", help="model YAML")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    demo_module.run_demo(args.out, args.model, args.epochs, args.imgsz, args.seed)


def _shape(text):
    """Parse 'BxCxHxW' (e.g. 8x256x20x20) into a tuple of four positive ints."""
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"shape must look like 8x256x20x20 (B x C x H x W), got {text!r}")
    return tuple(int(p) for p in parts)


def bench(argv: list[str] | None = None) -> int:
    """`ema-yolo bench module ...` or `ema-yolo bench video --model M --source V ...`."""
    import torch

    from . import bench as benchmarks
    from .ablation.variants import FAMILIES
    from .bench import MODULE_SHAPES, bench_module, bench_roofline, bench_step, bench_video, format_table

    parser = argparse.ArgumentParser(prog="ema-yolo bench", description=benchmarks.__doc__)
    parser.add_argument("what", choices=["module", "roofline", "step", "video"], help="what to benchmark")
    parser.add_argument("--model", help="video: model to run")
    parser.add_argument("--source", help="video: video file")
    parser.add_argument(
        "--family", default="yolov5-p2", choices=FAMILIES, help="step: model family (default: the paper's VisDrone one)"
    )
    parser.add_argument("--scale", default="s", choices=list("nsmlx"), help="step: model scale")
    parser.add_argument("--imgsz", type=int, default=640, help="video, step: input size")
    parser.add_argument("--batch", type=int, help="video: frames per inference call (4); step: images per step (2)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, help="timed calls per round (module 5, step 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--json", help="where to write the results (default bench_<what>.json)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to add fp32 and fp16 CUDA timings")
    parser.add_argument("--shapes", nargs="+", type=_shape, metavar="BxCxHxW",
                        help="module, roofline: input shapes (default module: the YOLOv8n and YOLOv8s neck maps at "
                        "640 px, batch 8; roofline: the YOLOv8n ones)")
    parser.add_argument("--no-compile", action="store_true", help="roofline: skip the torch.compile rows")
    args = parser.parse_args(argv)
    args.json = args.json or f"bench_{args.what}.json"

    torch.set_num_threads(args.threads)
    if args.what in ("video", "step"):
        if args.what == "video" and not (args.model and args.source):
            parser.error("video needs --model and --source")
        device = None if args.device == "cpu" else args.device
        result = (
            bench_video(args.model, args.source, args.imgsz, device, args.batch or 4)
            if args.what == "video"
            else bench_step(
                args.family, args.scale, args.imgsz, args.batch or 2, args.device, args.repeats or 2, args.rounds
            )
        )
        print(format_table([result]))
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
        return
    if args.what == "roofline":
        rows = bench_roofline(args.shapes or MODULE_SHAPES["yolov8n"], not args.no_compile, args.repeats or 5, args.rounds)
        print(format_table(rows))
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "threads": args.threads, "rows": rows}, indent=2))
        print(f"wrote {args.json}")
        return
    shapes = args.shapes or [s for family in MODULE_SHAPES.values() for s in family]
    runs = [("cpu", torch.float32)]
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        runs += [(args.device, torch.float32), (args.device, torch.float16)]
    rows = []
    for device, dtype in runs:
        rows += bench_module(shapes, device, dtype, args.repeats or 5, args.rounds)
    print(format_table(rows))
    with open(args.json, "w") as f:
        json.dump({"torch": torch.__version__, "threads": args.threads, "rows": rows}, f, indent=2)
    print(f"wrote {args.json}")


def yolo(argv: list[str] | None = None) -> int:
    """`ema-yolo yolo ...`: the stock `yolo` command with ema-yolo registered, for interpreters that skip .pth files."""
    from ultralytics.cfg import entrypoint

    from .integration.ultralytics import register

    register()
    sys.argv[:] = ["yolo", *(argv or [])]  # in place: Ultralytics kept a reference to this list at import
    return entrypoint()
