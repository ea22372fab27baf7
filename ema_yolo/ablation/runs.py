"""One run of `ema-yolo compare` (a variant at a seed), and the cost measurements of the variants.

A run trains with the stock Ultralytics trainer into its own folder, evaluates its `best.pt` under the protocol, keeps
the predictions for the bootstrap, and writes `done.json` last. The same function runs in the `compare` process or as
a Ray task in a fresh worker process (`compare`), so both give the same numbers.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import socket
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..eval.predictions import model_predictions
from ..eval.protocols import evaluate, load_ground_truth
from ..integration.transfer import transfer_report
from ..timing import time_calls

__all__ = ("CompareError", "check_marker", "count_gflops", "evaluate_start", "measure_costs", "read_predictions", "run_one")

PREDICTIONS = "predictions.json.gz"  # the final model's detections (save_json format), read by the bootstrap
START = "start.pt"  # the transferred model before any training step (with --pretrained)


class CompareError(Exception):
    """A run or the comparison cannot go on (the message is one line, naming the file or folder)."""


def check_marker(marker: Path, token: str) -> None:
    """Raise CompareError unless `marker` holds `token`: the driver wrote it into `--out`, so a worker that cannot
    read it does not share the driver's file system."""
    try:
        seen = marker.read_text()
    except OSError:
        seen = None
    if seen != token:
        raise CompareError(f"{marker.parent} is not visible from worker {socket.gethostname()} as the driver wrote it: "
                           "--out must be on a shared file system")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all (a killed run leaves no half-written file)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)


def _finished(last: Path, epochs: int) -> bool:
    """Whether `last.pt` holds the last epoch (killed after training, before `done.json`: nothing to resume)."""
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    return ckpt.get("epoch", -1) == -1 or ckpt["epoch"] + 1 >= epochs


def _train(cfg: str, folder: Path, settings: dict, on_model: Callable | None) -> Path:
    """Train (or resume from `last.pt`) one run into `folder`; return the path of its best.pt.

    With a pretrained checkpoint, the first start records the share of it that landed in `transfer.json` and saves the
    transferred model as `start.pt` (`on_pretrain_routine_end`, before any step); a resumed run keeps both.
    """
    from ultralytics import YOLO

    last = folder / "weights" / "last.pt"
    if last.is_file() and _finished(last, settings["epochs"]):
        return folder / "weights" / "best.pt"
    model = YOLO(str(last) if last.is_file() else cfg)
    if on_model is not None:
        on_model(model)
    if last.is_file():
        model.train(resume=True)
    else:
        if settings["pretrained"]:
            model.add_callback("on_pretrain_routine_end", lambda trainer: _record_start(trainer, folder))
        model.train(**settings, project=str(folder.parent), name=folder.name, exist_ok=True)
    return folder / "weights" / "best.pt"


def _record_start(trainer, folder: Path) -> None:
    """`transfer.json` and `start.pt` (saved as Ultralytics saves `best.pt`: the model in half precision)."""
    from ultralytics.utils.torch_utils import unwrap_model

    folder.mkdir(parents=True, exist_ok=True)
    model = unwrap_model(trainer.model)
    report = transfer_report(model)
    if report is not None:  # None: not an Ultralytics checkpoint; Ultralytics' own load reported on it
        (t, tt), (v, vt) = report.tensors, report.values
        record = {"tensors": f"{t}/{tt}", "values": f"{v}/{vt}", "transferred": round(v / vt, 4),
                  "new_layers": [f"model.{i} {name}" for i, name in report.new_layers]}
        _atomic_write(folder / "transfer.json", json.dumps(record, indent=2).encode())
    start = copy.deepcopy(model).half()
    start.criterion = None
    for p in start.parameters():
        p.requires_grad = False
    partial = folder / (START + ".partial")
    torch.save({"model": start, "train_args": vars(trainer.args), "epoch": -1}, partial)
    partial.replace(folder / START)


def run_one(spec: dict, on_model: Callable | None = None) -> dict:
    """Train, evaluate and record one (variant, seed) run; return its row of `results.json`'s "runs".

    A run with `done.json` returns that record without work; one with `last.pt` resumes.

    Args:
        spec (dict): `variant`, `seed`, `cfg` (model YAML), `folder`, `data`, `protocol`, `imgsz`, `device`,
            `threads` (torch threads, None: leave as is), `settings` (Ultralytics train arguments), `marker` and
            `token` (see `check_marker`).
        on_model (callable, optional): Called with the `YOLO` model before training (tests add callbacks with it).

    Returns:
        (dict): `variant`, `seed`, `model`, the protocol's summary metrics (in [0, 1], None where undefined), and
            with a pretrained checkpoint `transferred` (share of its values that landed) and `start_AP` (mAP50-95
            of the transferred model before training, same protocol).

    Raises:
        CompareError: If the run folder is not the driver's (`check_marker`).
    """
    folder = Path(spec["folder"])
    check_marker(Path(spec["marker"]), spec["token"])
    done = folder / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])  # the same count in every mode (Ray sets its own in its workers)
    best = _train(spec["cfg"], folder, spec["settings"], on_model)
    data, protocol, imgsz, device = spec["data"], spec["protocol"], spec["imgsz"], spec["device"]
    gt = load_ground_truth(data)
    predictions = model_predictions(best, data, protocol, imgsz, device=device)
    metrics = evaluate(gt, predictions, protocol, str(best))
    row = {"variant": spec["variant"], "seed": spec["seed"], "model": spec["cfg"]}
    row.update({k: v for k, v in metrics.items() if k != "per_class"})
    if spec["settings"]["pretrained"]:
        transfer = folder / "transfer.json"
        row["transferred"] = json.loads(transfer.read_text())["transferred"] if transfer.is_file() else None
        row["start_AP"] = evaluate_start(spec, gt)[0]["AP"]
    _atomic_write(folder / PREDICTIONS, gzip.compress(json.dumps(predictions).encode()))
    _atomic_write(done, json.dumps(row, indent=2).encode())
    return row


def evaluate_start(spec: dict, gt) -> tuple[dict, list[dict]]:
    """The protocol's metrics and the predictions of the run's `start.pt`, by the final model's evaluation path."""
    start = Path(spec["folder"]) / START
    predictions = model_predictions(start, spec["data"], spec["protocol"], spec["imgsz"], device=spec["device"])
    return evaluate(gt, predictions, spec["protocol"], str(start)), predictions


def read_predictions(folder: Path) -> list[dict]:
    """The predictions a finished run kept (`PREDICTIONS`)."""
    return json.loads(gzip.decompress((Path(folder) / PREDICTIONS).read_bytes()))


def count_gflops(model: torch.nn.Module, imgsz: int) -> float:
    """GFLOPs of one forward pass at `imgsz`, counted at the ATen op level (so EMA's matmuls, einsums and convs are
    all seen, unlike module-hook counters), plus one FLOP per element reduced by mean/sum (the pooling)."""
    from torch.utils.flop_counter import FlopCounterMode

    def reduction_flops(*args, **kwargs):
        return args[0].numel() if hasattr(args[0], "numel") else 0

    aten = torch.ops.aten
    custom = {aten.mean: reduction_flops, aten.sum: reduction_flops}
    param = next(model.parameters())
    x = torch.zeros(1, 3, imgsz, imgsz, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False, custom_mapping=custom)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() / 1e9


def measure_costs(models: dict[str, str], imgsz: int, device: str = "cpu", threads: int | None = None,
                  rounds: int = 20, warmup: int = 3) -> dict:
    """Parameters, GFLOPs and batch-1 latency of each model, the latencies timed interleaved in rounds.

    Each round times one forward pass of every model, starting one model later each round, so load on the machine
    falls on every model alike instead of on whichever ran while it was busy.

    Args:
        models (dict): variant -> checkpoint or model YAML (fused, float32, on `device`).
        imgsz (int): Square input size.
        device (str): 'cpu', '0', ... (Ultralytics' device strings).
        threads (int, optional): torch threads for the timing (None: as set).
        rounds (int): Timed rounds, after `warmup` untimed passes of each model.

    Returns:
        (dict): `device`, `threads`, `rounds` and `variants`: variant -> `params`, `GFLOPs`, `latency_ms`
            (median over the rounds) and `latency_iqr_ms` [25th, 75th percentile].
    """
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import select_device

    if threads:
        torch.set_num_threads(threads)
    dev = select_device(device, verbose=False)
    nets, costs = {}, {}
    for variant, source in models.items():
        net = YOLO(source).model.float().to(dev)
        net = net.fuse().eval() if hasattr(net, "fuse") else net.eval()
        nets[variant] = net
        costs[variant] = {"params": sum(p.numel() for p in net.parameters()), "GFLOPs": round(count_gflops(net, imgsz), 6)}
    x = torch.zeros(1, 3, imgsz, imgsz, device=dev)
    names = list(nets)
    samples = {v: [] for v in names}
    with torch.no_grad():
        for v in names:
            time_calls(lambda: nets[v](x), dev, 0, warmup=warmup)
        for r in range(rounds):
            for v in names[r % len(names):] + names[:r % len(names)]:
                samples[v] += time_calls(lambda: nets[v](x), dev, 1, warmup=0)
    for v in names:
        ms = np.array(samples[v]) * 1e3
        costs[v]["latency_ms"] = round(statistics.median(ms), 3)
        costs[v]["latency_iqr_ms"] = [round(float(q), 3) for q in np.percentile(ms, [25, 75])]
    return {"device": str(dev), "threads": torch.get_num_threads() if dev.type == "cpu" else None,
            "rounds": rounds, "imgsz": imgsz, "variants": costs, "host": socket.gethostname(), "pid": os.getpid()}
