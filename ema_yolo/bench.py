"""Benchmarks, measured side by side in one process: `ema-yolo bench module` (fast EMA vs the published operator
structure), `ema-yolo bench step` (a whole model's training step: baseline, with EMA, and with the published EMA) and
`ema-yolo bench video` (`ema-yolo video` vs the stock `yolo predict source=VIDEO save=True`).

Ratios, not absolute times, are the result: both modules run interleaved in one process, so machine noise hits both.
"""

import itertools
import statistics
import time
from pathlib import Path

import torch

from .nn import EMA, EMAReference, ema_groups
from .timing import time_calls

# YOLOv8n and YOLOv8s neck feature maps (C, H, W) at 640 px (the layers the EMA placements sit on), and the batches
# `ema-yolo bench module` runs them at: 1 (stock `yolo predict`), 4 (`ema-yolo video`), 8 (training).
NECK_MAPS = {
    "yolov8n": [(64, 80, 80), (128, 40, 40), (256, 20, 20)],
    "yolov8s": [(128, 80, 80), (256, 40, 40), (512, 20, 20)],
}
MODULE_BATCHES = (1, 2, 4, 8)
MODULE_SHAPES = {family: [(8, *m) for m in maps] for family, maps in NECK_MAPS.items()}  # batch 8


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


_COLD_BYTES = 256 * 2**20  # more than the last-level cache of the CPUs this runs on


def _one_pass(src, out):
    """The unit: read `src` once, write `out` once."""
    return torch.mul(src, 2.0, out=out)


def _no_grad_call(module, x):
    """Inference: `module(x)` without autograd."""
    with torch.no_grad():
        return module(x)


def _rotation(shape, tensors_per_item, grad=False):
    """Enough tensors of `shape` (`tensors_per_item` per item) that cycling through them touches `_COLD_BYTES`: each
    item is read from main memory, not from a cache a previous call warmed. Returns an endless iterator of items."""
    numel = torch.Size(shape).numel()
    count = max(2, -(-_COLD_BYTES // (4 * tensors_per_item * numel)))
    items = [tuple(torch.randn(shape, requires_grad=grad) for _ in range(tensors_per_item)) for _ in range(count)]
    return itertools.cycle(items)


def bench_roofline(shapes, compile=True, repeats=5, rounds=3):
    """EMA's CPU cost in read+write passes over its input, forward and forward+backward, per implementation, with the
    unit and the modules at the same cache temperature.

    One pass is `torch.mul(x, 2, out=out)` over a tensor of the input's shape (read once, written once), timed
    interleaved with the modules, so the figures are in units of what the memory system allows on this machine.
    Warm: the unit and the modules run on the same tensors every call (a map that fits the last-level cache stays
    there). Cold: both rotate over `_COLD_BYTES` of tensors, so every call reads its input from main memory.

    Args:
        shapes (list[tuple]): Input shapes (B, C, H, W), float32.
        compile (bool): Also time `torch.compile` (inductor) of both modules (compiles once per shape and module).
        repeats (int): Timed calls per round.
        rounds (int): Interleaved rounds; the median over all calls is reported.

    Returns:
        (list[dict]): Per shape: the unit pass in ms warm and cold, then forward and forward+backward passes, warm and
        cold, of EMA (default path), EMAReference (the published structure) and, with `compile`, of both compiled.
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
        warm_pair, warm_x = (torch.randn(shape), torch.empty(shape)), torch.randn(shape, requires_grad=True)
        cold_pairs, cold_xs = _rotation(shape, 2), _rotation(shape, 1, grad=True)
        inputs = {"warm": lambda: warm_x, "cold": lambda: next(cold_xs)[0]}
        calls = {("pass", temp): fn for temp, fn in (("warm", lambda: _one_pass(*warm_pair)),
                                                      ("cold", lambda: _one_pass(*next(cold_pairs))))}
        for name, m in modules.items():
            for temp, x in inputs.items():
                calls[(f"{name} forward", temp)] = lambda m=m, x=x: _no_grad_call(m, x())
                calls[(f"{name} forward+backward", temp)] = lambda m=m, x=x: m(x()).sum().backward()
        times = {}
        for _ in range(rounds):
            for key, fn in calls.items():
                times.setdefault(key, []).extend(time_calls(fn, "cpu", repeats))
        unit = {temp: statistics.median(times.pop(("pass", temp))) for temp in inputs}
        rows.append(
            {"shape": list(shape), **{f"pass ms {temp}": round(unit[temp] * 1e3, 3) for temp in inputs},
             **{f"{what} passes {temp}": round(statistics.median(v) / unit[temp], 1) for (what, temp), v in times.items()}}
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
    assignment: what differs between the variants is the network, not the loss); returns the output tensors."""
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
    return outputs


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

    from .ablation.variants import variant_cfg
    from .integration.ultralytics import register

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
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
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
