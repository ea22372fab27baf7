"""`ema-yolo demo`, `ema-yolo bench`, `ema-yolo check-device` and `ema-yolo yolo`: their parsers and handlers (the
work: `ema_yolo.demo`, `ema_yolo.bench`, `ema_yolo.check_device`, Ultralytics' own command line)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_format import HelpFormatter

__all__ = ("bench", "check_device", "demo", "yolo")


def demo(argv: list[str] | None = None) -> int:
    """`ema-yolo demo`."""
    from . import demo as demo_module

    parser = argparse.ArgumentParser(prog="ema-yolo demo", description=demo_module.__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--out", default="runs/ema-yolo-demo", help="run folder")
    parser.add_argument("--model", default="yolov8n-ema.yaml", help="model YAML")
    parser.add_argument("--epochs", type=int, default=40, help="training epochs")
    parser.add_argument("--imgsz", type=int, default=160, help="image size (px) of the generated set and the model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated set and of training")
    args = parser.parse_args(argv)
    demo_module.run_demo(args.out, args.model, args.epochs, args.imgsz, args.seed)


def _shape(text):
    """Parse 'BxCxHxW' (e.g. 8x256x20x20) into a tuple of four positive ints."""
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"shape must look like 8x256x20x20 (B x C x H x W), got {text!r}")
    return tuple(int(p) for p in parts)


def _write_json(path, result):
    """Write `result` to `path` when the user asked for a file (`--json`); the table on stdout is the default output."""
    if path:
        Path(path).write_text(json.dumps(result, indent=2))
        print(f"wrote {path}")


def bench(argv: list[str] | None = None) -> int:
    """`ema-yolo bench module ...` or `ema-yolo bench video --model M --source V ...`."""
    import torch

    from . import bench as benchmarks
    from .ablation.variants import FAMILIES
    from .bench import (
        MODULE_BATCHES,
        MODULE_SHAPES,
        NECK_MAPS,
        bench_module,
        bench_roofline,
        bench_step,
        bench_video,
        format_table,
    )

    parser = argparse.ArgumentParser(prog="ema-yolo bench", description=benchmarks.__doc__, formatter_class=HelpFormatter)
    parser.add_argument("what", choices=["module", "roofline", "step", "video"], help="what to benchmark")
    parser.add_argument("--model", help="video: model to run")
    parser.add_argument("--source", help="video: video file")
    parser.add_argument(
        "--family", default="yolov5-p2", choices=FAMILIES, help="step: model family (default: the paper's VisDrone one)"
    )
    parser.add_argument("--scale", default="s", choices=list("nsmlx"), help="step: model scale")
    parser.add_argument("--imgsz", type=int, default=640, help="video, step: input size")
    parser.add_argument("--batch", type=int, help="video: frames per inference call (4); step: images per step (2)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--repeats", type=int, help="timed calls per round (module 5, step 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--json", help="also write the results to this JSON file (default: print only)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to add fp32 and fp16 CUDA timings")
    parser.add_argument("--shapes", nargs="+", type=_shape, metavar="BxCxHxW",
                        help="module, roofline: input shapes (default module: the YOLOv8n and YOLOv8s neck maps at "
                        "640 px, batch 1, 2, 4 and 8; roofline: the YOLOv8n ones at batch 8)")
    parser.add_argument("--no-compile", action="store_true", help="roofline: skip the torch.compile rows")
    args = parser.parse_args(argv)

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
        _write_json(args.json, result)
        return
    if args.what == "roofline":
        rows = bench_roofline(args.shapes or MODULE_SHAPES["yolov8n"], not args.no_compile, args.repeats or 5, args.rounds)
        print(format_table(rows))
        _write_json(args.json, {"torch": torch.__version__, "threads": args.threads, "rows": rows})
        return
    shapes = args.shapes or [(b, *m) for b in MODULE_BATCHES for maps in NECK_MAPS.values() for m in maps]
    runs = [("cpu", torch.float32)]
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        runs += [(args.device, torch.float32), (args.device, torch.float16)]
    rows = []
    for device, dtype in runs:
        rows += bench_module(shapes, device, dtype, args.repeats or 5, args.rounds)
    print(format_table(rows))
    _write_json(args.json, {"torch": torch.__version__, "threads": args.threads, "rows": rows})


def _device(text):
    """Parse a device: 0 / 1 (CUDA index), cpu, mps, cuda, cuda:1, xpu ...; error if this torch cannot use it."""
    import torch

    device = torch.device(f"cuda:{text}" if text.isdigit() else text)
    if device.type != "cpu":
        backend = getattr(torch, device.type, None)
        if backend is None or not backend.is_available():
            raise argparse.ArgumentTypeError(f"device {text!r} is not available to this torch ({torch.__version__})")
    return device


def check_device(argv: list[str] | None = None) -> int:
    """`ema-yolo check-device [--device 0|cpu|mps ...] [--quick] [--json FILE] [--sections ...]`."""
    import torch

    from . import check_device as checks
    from .bench import format_table

    parser = argparse.ArgumentParser(prog="ema-yolo check-device", description=checks.__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--device", nargs="+", type=_device, default=None,
                        help="devices to check: a CUDA index (0), cuda:N, mps, xpu or cpu (default: CUDA 0 if "
                        "available, else cpu)")
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats, one EMA module compiled")
    parser.add_argument("--json", help="also write the report as JSON to this file")
    parser.add_argument("--sections", nargs="+", choices=checks.SECTIONS, default=list(checks.SECTIONS),
                        help="sections to run")
    args = parser.parse_args(argv)
    devices = args.device or [torch.device("cuda:0" if torch.cuda.is_available() else "cpu")]
    reports = {}
    for device in devices:
        report = reports[str(device)] = checks.check_device(device, args.quick, args.sections)
        print(f"# ema-yolo check-device: {device}{' (quick)' if args.quick else ''}\n")
        for section, rows in report.items():
            print(f"## {section}\n\n{format_table(rows if isinstance(rows, list) else [rows])}\n")
    failed = [f"{device} {section}" for device, report in reports.items() for section, rows in report.items()
              if isinstance(rows, list) and any(r.get("pass") is False for r in rows)]  # None: reported only
    _write_json(args.json, reports)
    print(f"failed: {', '.join(failed)}" if failed else "all checks passed")
    return 1 if failed else 0


def yolo(argv: list[str] | None = None) -> int:
    """`ema-yolo yolo ...`: the stock `yolo` command with ema-yolo registered, for interpreters that skip .pth files."""
    from ultralytics.cfg import entrypoint

    from .integration.ultralytics import register

    register()
    sys.argv[:] = ["yolo", *(argv or [])]  # in place: Ultralytics kept a reference to this list at import
    return entrypoint()
