"""`ema-yolo compare`: a fair baseline-vs-attention ablation with the stock Ultralytics trainer.

Every variant is trained with the same seed, data order and hyper-parameters, evaluated with the same protocol, and
measured for parameters, GFLOPs and latency. One run folder gets `results.{md,csv,json}`, `map_vs_latency.png` and
`training_curves.png`. A finished variant leaves `<variant>/done.json`; an interrupted one resumes from its
`last.pt`, so re-running the same command continues instead of starting over.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from ..eval.predictions import model_predictions
from ..eval.protocols import evaluate, format_metric, load_ground_truth
from ..integration.transfer import transfer_report
from ..timing import time_calls
from .variants import variant_cfg

__all__ = ("count_gflops", "measure_latency", "run_compare")

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


def measure_latency(model: torch.nn.Module, imgsz: int, runs: int = 20) -> float:
    """Median milliseconds of a batch-1 forward pass at `imgsz` (after 3 warm-up passes)."""
    param = next(model.parameters())
    x = torch.zeros(1, 3, imgsz, imgsz, device=param.device, dtype=param.dtype)
    with torch.no_grad():
        return statistics.median(time_calls(lambda: model(x), param.device, runs, warmup=3)) * 1e3


def _train(cfg, folder, settings, on_model=None):
    """Train (or resume) one variant into `folder`; return the path of best.pt.

    With a pretrained checkpoint, the share of it that landed in this variant is written to `transfer.json` when
    training starts (a resumed run keeps the first start's record).
    """
    from ultralytics import YOLO

    last = folder / "weights" / "last.pt"
    resume = last.is_file()
    model = YOLO(str(last) if resume else cfg)
    if on_model is not None:
        on_model(model)
    if resume:
        model.train(resume=True)
    else:
        if settings["pretrained"]:
            model.add_callback("on_pretrain_routine_end", lambda trainer: _record_transfer(trainer, folder))
        model.train(**settings, project=str(folder.parent), name=folder.name, exist_ok=True)
    return folder / "weights" / "best.pt"


def _record_transfer(trainer, folder):
    report = transfer_report(trainer.model)
    if report is None:  # not an Ultralytics checkpoint: Ultralytics' own load reported on it
        return
    (t, tt), (v, vt) = report.tensors, report.values
    record = {"tensors": f"{t}/{tt}", "values": f"{v}/{vt}", "transferred": round(v / vt, 4),
              "new_layers": [f"model.{i} {name}" for i, name in report.new_layers]}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "transfer.json").write_text(json.dumps(record, indent=2))


def _plots(out, rows, folders):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in rows:
        if r["AP"] is not None:  # undefined (no ground truth): no point to place
            ax.scatter(r["latency_ms"], r["AP"], s=60)
            ax.annotate(r["variant"], (r["latency_ms"], r["AP"]), textcoords="offset points", xytext=(5, 5))
    undefined = [r["variant"] for r in rows if r["AP"] is None]
    title = "accuracy vs latency" + (f" (mAP50-95 n/a: {', '.join(undefined)})" if undefined else "")
    ax.set(xlabel="latency, batch 1 (ms)", ylabel="mAP50-95", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "map_vs_latency.png", dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for variant, folder in folders.items():
        results = folder / "results.csv"
        if not results.is_file():
            continue
        with open(results) as f:
            table = list(csv.DictReader(f))
        epochs = [int(float(r["epoch"])) for r in table]
        axes[0].plot(epochs, [float(r["metrics/mAP50-95(B)"]) for r in table], marker="o", label=variant)
        axes[1].plot(epochs, [float(r["train/box_loss"]) for r in table], marker="o", label=variant)
    axes[0].set(xlabel="epoch", ylabel="val mAP50:95 (Ultralytics)", title="validation mAP")
    axes[1].set(xlabel="epoch", ylabel="train box loss", title="training loss")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=120)
    plt.close(fig)


def run_compare(data: str | Path | None, family: str, scale: str, variants: list[str], out: str | Path, epochs: int = 100,
                imgsz: int = 640, batch: int = 16, device: str = "cpu", seed: int = 0, protocol: str = "coco",
                workers: int = 8, pretrained: str | Path | None = None, train: bool = True,
                on_model: Callable | None = None) -> list[dict]:
    """Train, evaluate and measure each variant; write the tables and plots into `out`; return the rows.

    Args:
        pretrained (str | Path, optional): A stock checkpoint (e.g. yolov8s.pt) whose weights every variant starts
            from, transferred structurally (`ema_yolo.integration.transfer`); its `transferred` column is the share of
            the checkpoint's values that landed. None trains from scratch.
        train (bool): False measures the architecture only (params, GFLOPs, latency): the paper's cost columns.
        on_model (callable, optional): Called with each `YOLO` model before training (for callbacks).
        out (str | Path): Run folder; a relative one is relative to the working directory, as for every path here.
    """
    from ultralytics import YOLO

    out = Path(out).resolve()  # Ultralytics puts a relative `project` under its own runs folder, not the caller's
    out.mkdir(parents=True, exist_ok=True)
    if pretrained and Path(pretrained).is_file():
        pretrained = str(Path(pretrained).resolve())  # a bare name such as yolov8s.pt is left to Ultralytics' download
    settings = dict(data=str(data), epochs=epochs, imgsz=imgsz, batch=batch, device=device, seed=seed, workers=workers,
                    deterministic=True, pretrained=str(pretrained) if pretrained else False, amp=device != "cpu",
                    plots=True, verbose=False)
    (out / "settings.json").write_text(json.dumps({"family": family, "scale": scale, "variants": variants,
                                                   "protocol": protocol, **settings}, indent=2))
    gt = load_ground_truth(data) if train else None
    rows, folders = [], {}
    for variant in variants:
        cfg, folder = variant_cfg(family, scale, variant), out / variant
        folders[variant] = folder
        done = folder / "done.json"
        if done.is_file():
            rows.append(json.loads(done.read_text()))
            continue
        row = {"variant": variant, "model": cfg}
        if train:
            best = _train(cfg, folder, settings, on_model)
            metrics = evaluate(gt, model_predictions(best, data, protocol, imgsz, device=device), protocol, str(best))
            row.update({k: None if v is None else round(v, 4) for k, v in metrics.items() if k != "per_class"})
            if (folder / "transfer.json").is_file():
                row["transferred"] = json.loads((folder / "transfer.json").read_text())["transferred"]
            net = YOLO(best).model
        else:
            net = YOLO(cfg).model
        net = net.float().to("cpu" if device == "cpu" else f"cuda:{device}" if str(device).isdigit() else device)
        net = net.fuse().eval() if hasattr(net, "fuse") else net.eval()
        row["params"] = sum(p.numel() for p in net.parameters())
        row["GFLOPs"] = round(count_gflops(net, imgsz), 6)
        row["latency_ms"] = round(measure_latency(net, imgsz), 2)
        folder.mkdir(parents=True, exist_ok=True)
        partial = done.with_suffix(".partial")  # a run killed while writing leaves no half-written marker
        partial.write_text(json.dumps(row, indent=2))
        partial.replace(done)
        rows.append(row)
    _write_tables(out, rows)
    if train:
        _plots(out, rows, folders)
    return rows


def _write_tables(out, rows):
    keys = list(dict.fromkeys(k for r in rows for k in r))
    shown = [{k: format_metric(None) if k in r and r[k] is None else r.get(k, "") for k in keys} for r in rows]  # n/a
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(shown)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]) for k in keys) + " |" for r in shown]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
