"""Benchmarks: `ema-yolo bench module` times the fast EMA against the published operator structure side by side.

Ratios, not absolute times, are the result: both modules run interleaved in one process, so machine noise hits both.
"""

import argparse
import json
import statistics
import time

import torch

from .nn import EMA, EMAReference

# YOLOv8n and YOLOv8s neck feature maps at 640 px, batch 8 (the layers the EMA placements sit on).
MODULE_SHAPES = {
    "yolov8n": [(8, 64, 80, 80), (8, 128, 40, 40), (8, 256, 20, 20)],
    "yolov8s": [(8, 128, 80, 80), (8, 256, 40, 40), (8, 512, 20, 20)],
}


def _time(fn, device, repeats):
    """Return the per-call seconds of `fn` over `repeats` calls, after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return samples


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
        ref = EMAReference(shape[1]).to(device, dtype)
        fast = EMA(shape[1]).to(device, dtype)
        fast.load_state_dict(ref.state_dict())
        x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
        times = {}
        for _ in range(rounds):
            for name, module in (("reference", ref), ("fast", fast)):
                with torch.no_grad():
                    times.setdefault((name, "forward"), []).extend(_time(lambda: module(x), device, repeats))
                times.setdefault((name, "forward+backward"), []).extend(
                    _time(lambda: module(x).sum().backward(), device, repeats)
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


def format_table(rows):
    """Render benchmark rows as a Markdown table."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None):
    """Command line: `ema-yolo bench module [--threads N] [--json FILE]`."""
    parser = argparse.ArgumentParser(prog="ema-yolo bench", description=__doc__)
    parser.add_argument("what", choices=["module"], help="what to benchmark")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--json", default="bench_module.json", help="where to write the results")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to add fp32 and fp16 CUDA timings")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    shapes = [s for family in MODULE_SHAPES.values() for s in family]
    runs = [("cpu", torch.float32)]
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        runs += [(args.device, torch.float32), (args.device, torch.float16)]
    rows = []
    for device, dtype in runs:
        rows += bench_module(shapes, device, dtype, args.repeats, args.rounds)
    print(format_table(rows))
    with open(args.json, "w") as f:
        json.dump({"torch": torch.__version__, "threads": args.threads, "rows": rows}, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
