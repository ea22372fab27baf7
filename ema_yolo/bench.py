"""Benchmarks, measured side by side in one process: `ema-yolo bench module` (fast EMA vs the published operator
structure), `ema-yolo bench step` (a whole model's training step: baseline, with EMA, and with the published EMA) and
`ema-yolo bench video` (`ema-yolo video` vs the stock `yolo predict source=VIDEO save=True`).

Ratios, not absolute times, are the result: both modules run interleaved in one process, so machine noise hits both.
"""

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch

from .nn import EMA, EMAReference, ema_groups
from .timing import time_calls

# YOLOv8n and YOLOv8s neck feature maps at 640 px, batch 8 (the layers the EMA placements sit on).
MODULE_SHAPES = {
    "yolov8n": [(8, 64, 80, 80), (8, 128, 40, 40), (8, 256, 20, 20)],
    "yolov8s": [(8, 128, 80, 80), (8, 256, 40, 40), (8, 512, 20, 20)],
}


def bench_module(shapes, device="cpu", dtype=torch.float32, repeats=5, rounds=3):
    """Time forward and forward+backward of `EMA` and `EMAReference` for each shape; return one row per shape.

    Args:
        shapes (list[tuple]): Input shapes (B, C, H, W).
        device (str): Torch device.
        dtype (torch.dtype): Input and weight dtype.
        repeats (int): Timed calls per round.
        rounds (int): Interleaved rounds (reference, fast, reference, ...); the median over all calls is reported.

    Returns:
        (list[dict]): Per shape: milliseconds for each module and pass, and reference/fast speed-up ratios.
    """
    device = torch.device(device)
    rows = []
    for shape in shapes:
        ref = EMAReference(shape[1], ema_groups(shape[1])).to(device, dtype)  # the groups EMA falls back to
        fast = EMA(shape[1]).to(device, dtype)
        fast.load_state_dict(ref.state_dict())
        x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
        times = {}
        for _ in range(rounds):
            for name, module in (("reference", ref), ("fast", fast)):
                with torch.no_grad():
                    times.setdefault((name, "forward"), []).extend(time_calls(lambda m=module, x=x: m(x), device, repeats))
                times.setdefault((name, "forward+backward"), []).extend(
                    time_calls(lambda m=module, x=x: m(x).sum().backward(), device, repeats)
                )
        ms = {key: statistics.median(v) * 1e3 for key, v in times.items()}
        rows.append(
            {
                "shape": list(shape),
                "device": str(device),
                "dtype": str(dtype).replace("torch.", ""),
                **{f"{name} {p} ms": round(ms[(name, p)], 3) for name, p in ms},
                "forward speed-up": round(ms[("reference", "forward")] / ms[("fast", "forward")], 2),
                "forward+backward speed-up": round(
                    ms[("reference", "forward+backward")] / ms[("fast", "forward+backward")], 2
                ),
            }
        )
    return rows


_PASS_BYTES = 256 * 2**20  # more than the last-level cache of the CPUs this runs on


def _one_pass(src, out):
    """The unit: read `src` once, write `out` once."""
    return torch.mul(src, 2.0, out=out)


def _no_grad_call(module, x):
    """Inference: `module(x)` without autograd."""
    with torch.no_grad():
        return module(x)


def bench_roofline(shapes, compile=True, repeats=5, rounds=3):
    """EMA's CPU cost in read+write passes over its input: forward and forward+backward, per implementation.

    One pass is `torch.mul(x, 2, out=out)` over a tensor of the input's shape (read once, written once), timed
    interleaved with the modules, so the figures are in units of what the memory system allows on this machine. The
    passes rotate over enough tensors (`_PASS_BYTES` in all) that each one reads and writes main memory, not a
    cache that the previous pass warmed (P3 at batch 8, 2 x 13 MB, would otherwise fit a 32 MB L3).

    Args:
        shapes (list[tuple]): Input shapes (B, C, H, W), float32.
        compile (bool): Also time `torch.compile` (inductor) of both modules (compiles once per shape and module).
        repeats (int): Timed calls per round.
        rounds (int): Interleaved rounds; the median over all calls is reported.

    Returns:
        (list[dict]): Per shape: the pass in ms, then forward and forward+backward passes of EMA (default path),
        EMAReference (the published structure) and, with `compile`, of both compiled.
    """
    rows = []
    for shape in shapes:
        ref = EMAReference(shape[1], ema_groups(shape[1]))
        fast = EMA(shape[1])
        fast.load_state_dict(ref.state_dict())
        modules = {"EMA": fast, "EMAReference": ref}
        if compile:
            # static shapes: inductor (torch 2.14) fails on the published structure with symbolic shapes
            modules.update({f"compiled {name}": torch.compile(m, dynamic=False) for name, m in list(modules.items())})
        x = torch.randn(shape, requires_grad=True)
        pairs = itertools.cycle(
            [(torch.randn(shape), torch.empty(shape)) for _ in range(max(2, -(-_PASS_BYTES // (8 * x.numel()))))]
        )
        calls = {"pass": lambda: _one_pass(*next(pairs))}
        for name, m in modules.items():
            calls[f"{name} forward"] = lambda m=m: _no_grad_call(m, x)
            calls[f"{name} forward+backward"] = lambda m=m: m(x).sum().backward()
        times = {}
        for _ in range(rounds):
            for key, fn in calls.items():
                times.setdefault(key, []).extend(time_calls(fn, "cpu", repeats))
        unit = statistics.median(times.pop("pass"))
        rows.append(
            {"shape": list(shape), "pass ms": round(unit * 1e3, 3),
             **{f"{key} passes": round(statistics.median(v) / unit, 1) for key, v in times.items()}}
        )
    return rows


def with_reference_ema(model):
    """A copy of an Ultralytics model in which every `EMA` is replaced by an `EMAReference` with the same weights."""
    import copy

    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, EMA):
                ref = EMAReference(child.channels, child.groups).to(next(child.parameters()))
                ref.load_state_dict(child.state_dict())
                ref.__dict__.update({k: v for k, v in vars(child).items() if k in ("f", "i", "type", "np")})
                setattr(parent, name, ref)
    return model


def _training_step(model, x):
    """Forward in training mode and backward of the summed squares of every head output (no optimizer, no loss
    assignment: what differs between the variants is the network, not the loss)."""
    outputs, stack = [], [model(x)]
    while stack:
        item = stack.pop()
        if torch.is_tensor(item):
            outputs.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    sum(t.float().square().mean() for t in outputs if t.requires_grad).backward()


def bench_step(family="yolov5-p2", scale="s", imgsz=640, batch=2, device="cpu", repeats=2, rounds=3):
    """Seconds per training step of the baseline model, the EMA model, and the EMA model with the published EMA.

    Args:
        family (str): Model family of `ema-yolo compare` (e.g. 'yolov5-p2', the paper's VisDrone placement).
        scale (str): Model scale, one of n, s, m, l, x.
        imgsz (int): Square input size.
        batch (int): Images per step.
        device (str): Torch device.
        repeats (int): Timed steps per round (after one warm-up step).
        rounds (int): Interleaved rounds; the median over all steps is reported.

    Returns:
        (dict): Seconds per step for each variant, and the EMA variants' cost over the baseline.
    """
    from ultralytics.nn.tasks import DetectionModel

    from . import register
    from .eval.compare import variant_cfg

    register()
    torch.manual_seed(0)
    ema_cfg = variant_cfg(family, scale, "ema")
    baseline = DetectionModel(variant_cfg(family, scale, "baseline"), verbose=False).to(device).train()
    ema = DetectionModel(ema_cfg, verbose=False).to(device).train()
    models = {"baseline": baseline, "EMA": ema, "EMAReference": with_reference_ema(ema)}
    x = torch.randn(batch, 3, imgsz, imgsz, device=device)
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name] += time_calls(lambda m=model: _training_step(m, x), device, repeats)
    s = {name: statistics.median(v) for name, v in times.items()}
    return {
        "model": ema_cfg, "imgsz": imgsz, "batch": batch, "device": str(device),
        **{f"{name} s/step": round(v, 3) for name, v in s.items()},
        "EMA cost": f"{(s['EMA'] / s['baseline'] - 1) * 100:+.1f}%",
        "EMAReference cost": f"{(s['EMAReference'] / s['baseline'] - 1) * 100:+.1f}%",
    }


def format_table(rows):
    """Render benchmark rows as a Markdown table."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def bench_video(model, source, imgsz=640, device=None, batch=4):
    """Frames/s of `ema-yolo video` and of the stock `yolo predict source=VIDEO save=True`, same model and video.

    Returns:
        (dict): Frames and seconds for each, and the speed ratio (ours / stock).
    """
    import tempfile

    from ultralytics import YOLO

    from .video import annotate_video

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        stock_frames = sum(1 for _ in YOLO(model).predict(source, stream=True, save=True, imgsz=imgsz, device=device,
                                                          verbose=False, project=tmp, name="stock"))
        stock_s = time.perf_counter() - start
        start = time.perf_counter()
        ours = annotate_video(model, source, Path(tmp) / "ours.mp4", imgsz=imgsz, device=device, batch=batch, progress=False)
        ours_s = time.perf_counter() - start
    return {"source": str(source), "model": str(model), "imgsz": imgsz, "stock_frames": stock_frames,
            "stock_s": round(stock_s, 2), "stock_fps": round(stock_frames / stock_s, 2),
            "ours_frames": ours["frames_written"], "ours_s": round(ours_s, 2),
            "ours_fps": round(ours["frames_written"] / ours_s, 2), "speed-up": round(stock_s / ours_s * ours["frames_written"] / stock_frames, 2)}


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


def main(argv=None):
    """Command line: `ema-yolo bench module ...` or `ema-yolo bench video --model M --source V ...`."""
    from .eval.compare import FAMILIES

    parser = argparse.ArgumentParser(prog="ema-yolo bench", description=__doc__)
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
    parser.add_argument("--json", help="also write the results to this JSON file (default: print only)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to add fp32 and fp16 CUDA timings")
    parser.add_argument("--shapes", nargs="+", type=_shape, metavar="BxCxHxW",
                        help="module, roofline: input shapes (default module: the YOLOv8n and YOLOv8s neck maps at "
                        "640 px, batch 8; roofline: the YOLOv8n ones)")
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
    shapes = args.shapes or [s for family in MODULE_SHAPES.values() for s in family]
    runs = [("cpu", torch.float32)]
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        runs += [(args.device, torch.float32), (args.device, torch.float16)]
    rows = []
    for device, dtype in runs:
        rows += bench_module(shapes, device, dtype, args.repeats or 5, args.rounds)
    print(format_table(rows))
    _write_json(args.json, {"torch": torch.__version__, "threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
