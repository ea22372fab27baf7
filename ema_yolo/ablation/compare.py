"""`ema-yolo compare`: a fair baseline-vs-attention ablation with the stock Ultralytics trainer, over several seeds.

Every variant is trained once per seed; at one seed every variant gets the same data order and augmentations (and,
from a pretrained checkpoint, the same start for every shared layer), the same hyper-parameters and the same
evaluation protocol. Each (variant, seed) run has its own folder `<variant>/seed<N>/` with its own `done.json`; an
interrupted run resumes from its `last.pt`, so re-running the same command finishes only what is missing. The runs go
one after another in this process, or with `--ray` as Ray tasks, each in a fresh worker process, on a local Ray
runtime or a cluster. The differences from the reference variant get a paired bootstrap interval over the validation
images (`ema_yolo.eval.bootstrap`); parameters, GFLOPs and latency are measured on one machine, the variants timed
interleaved. One run folder gets `results.{md,csv,json}`, `map_vs_latency.png`, `deltas.png` and
`training_curves.png`.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from ..eval.bootstrap import match, paired_bootstrap
from ..eval.protocols import COCO_KEYS, VISDRONE_KEYS, format_metric, load_ground_truth
from . import report
from .runs import CompareError, measure_costs, read_predictions, run_one
from .variants import variant_cfg

__all__ = ("CompareError", "run_compare")

MARKER = ".ema-yolo-compare"  # written by the driver into --out; every run checks it sees the same file


def _ray_module():
    try:
        import ray
    except ImportError:
        raise CompareError('--ray needs Ray: pip install -e ".[ray]" (or pip install ray)') from None
    return ray


def _ray_task(spec: dict) -> dict:
    """A run in a fresh Ray worker process; Ultralytics' output goes to the run's `train.log`."""
    folder = Path(spec["folder"])
    from .runs import check_marker

    check_marker(Path(spec["marker"]), spec["token"])  # before anything is written into a folder we may not share
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.log", "a") as log:  # the worker exits after the task (max_calls=1)
        os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)  # fds, so C extensions and subprocesses write there too
        return run_one(spec)


def _ray_costs(models, imgsz, device, threads, marker, token):
    from .runs import check_marker

    check_marker(marker, token)
    return measure_costs(models, imgsz, device, threads)


def _init_ray(ray, address):
    if ray.is_initialized():
        return
    if address == "local":
        ray.init(include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)


def _summary_line(row: dict, keys: list[str]) -> str:
    shown = [f"{report.NAMES.get(k, k)} {format_metric(row.get(k))}" for k in keys[:2]]
    if "start_AP" in row:
        shown.append(f"start mAP50-95 {format_metric(row['start_AP'])}")
    return f"{row['variant']} seed {row['seed']}: " + ", ".join(shown)


def run_compare(data: str | Path | None, family: str, scale: str, variants: list[str], out: str | Path,
                epochs: int = 100, imgsz: int = 640, batch: int = 16, device: str = "cpu", seeds: list[int] = (0,),
                protocol: str = "coco", workers: int = 8, pretrained: str | Path | None = None, train: bool = True,
                resamples: int = 1000, ray: str | None = None, gpus_per_run: float | None = None,
                cpus_per_run: float | None = None, threads: int | None = None,
                on_model: Callable | None = None) -> dict:
    """Train, evaluate and measure each variant at each seed; write the tables and plots into `out`.

    Args:
        data (str | Path): Dataset YAML (None with `train=False`).
        family, scale (str): Model family and scale (`variants.variant_cfg`).
        variants (list[str]): Variant names; the reference of the differences is `baseline` if listed, else the first.
        out (str | Path): Run folder; a relative one is relative to the working directory. Under `ray` every worker
            must see it at the same path (a shared file system).
        seeds (list[int]): Training seeds; every variant is trained once per seed.
        pretrained (str | Path, optional): A stock checkpoint (e.g. yolov8s.pt) every run starts from, transferred
            structurally (`ema_yolo.integration.transfer`); runs then get `transferred` and `start_AP`.
        train (bool): False measures the architecture only (params, GFLOPs, latency): the paper's cost columns.
        resamples (int): Bootstrap resamples of the validation images for the intervals.
        ray (str, optional): None runs in this process; 'local' starts a local Ray runtime; otherwise the address of
            a Ray cluster to join.
        gpus_per_run, cpus_per_run (float, optional): Each Ray task's resources (default: 1 GPU where CUDA is
            visible, else none; 1 CPU). A run with GPUs trains on those Ray assigns it.
        threads (int, optional): torch threads in every run and in the latency timing (default: `cpus_per_run` under
            Ray, else as set); the same count gives the same numbers in both modes.
        on_model (callable, optional): Called with each `YOLO` model before training, in this process only.

    Returns:
        (dict): The contents of `results.json` (`report`).

    Raises:
        CompareError: If Ray is missing, a worker cannot see `out`, or runs failed (those finished are kept; re-run
            the same command to finish the rest).
    """
    out = Path(out).resolve()  # Ultralytics puts a relative `project` under its own runs folder, not the caller's
    seeds = list(seeds)
    ray_module = _ray_module() if ray else None
    if ray:
        import torch

        gpus_per_run = (1 if torch.cuda.is_available() else 0) if gpus_per_run is None else gpus_per_run
        cpus_per_run = 1 if cpus_per_run is None else cpus_per_run
        threads = threads or max(1, int(cpus_per_run))
        device = ",".join(str(i) for i in range(int(gpus_per_run))) if gpus_per_run else "cpu"
    out.mkdir(parents=True, exist_ok=True)
    if pretrained and Path(pretrained).is_file():
        pretrained = str(Path(pretrained).resolve())  # a bare name such as yolov8s.pt is left to Ultralytics' download
    data = str(Path(data).resolve()) if data and Path(data).is_file() else data
    settings = dict(data=str(data), epochs=epochs, imgsz=imgsz, batch=batch, device=device, workers=workers,
                    deterministic=True, pretrained=str(pretrained) if pretrained else False, amp=device != "cpu",
                    plots=True, verbose=False)
    (out / "settings.json").write_text(json.dumps({"family": family, "scale": scale, "variants": variants,
                                                   "seeds": seeds, "protocol": protocol, **settings}, indent=2))
    marker, token = out / MARKER, secrets.token_hex(8)
    marker.write_text(token)
    try:
        if ray:
            _init_ray(ray_module, ray)
        specs = [{"variant": v, "seed": s, "cfg": variant_cfg(family, scale, v), "folder": str(out / v / f"seed{s}"),
                  "data": data, "protocol": protocol, "imgsz": imgsz, "device": device, "threads": threads,
                  "settings": {**settings, "seed": s}, "marker": str(marker), "token": token}
                 for s in seeds for v in variants]
        runs = _collect(_run_all(specs, ray_module, gpus_per_run, cpus_per_run, on_model), specs, protocol) if train else []
        if train:
            sources = {v: str(Path(next(sp["folder"] for sp in specs if sp["variant"] == v)) / "weights" / "best.pt")
                       for v in variants}
        else:
            sources = {v: variant_cfg(family, scale, v) for v in variants}
        costs = _costs(out, sources, imgsz, device, threads, ray_module, gpus_per_run, cpus_per_run, marker, token)
    finally:
        marker.unlink(missing_ok=True)
    return _results(out, data, protocol, variants, seeds, runs, costs, resamples, train,
                    {(sp["variant"], sp["seed"]): Path(sp["folder"]) for sp in specs})


def _run_all(specs, ray, gpus_per_run, cpus_per_run, on_model) -> Iterator[tuple[dict, dict | None, str | None]]:
    """Yield (spec, row, error) for every run as it finishes; runs already done come first."""
    todo = []
    for spec in specs:
        done = Path(spec["folder"]) / "done.json"
        if done.is_file():
            yield spec, json.loads(done.read_text()), None
        else:
            todo.append(spec)
    if ray is None:
        for spec in todo:  # an exception here (Ctrl-C included) ends the command; what finished is kept
            yield spec, run_one(spec, on_model), None
        return
    task = ray.remote(max_calls=1, max_retries=0)(_ray_task)  # max_calls=1: every run in a fresh process
    pending = {task.options(num_cpus=cpus_per_run, num_gpus=gpus_per_run).remote(spec): spec for spec in todo}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        spec = pending.pop(ready[0])
        try:
            yield spec, ray.get(ready[0]), None
        except Exception as e:  # the task's error, or its worker died: reported, the others go on
            cause = getattr(e, "cause", None) or e
            if isinstance(cause, CompareError):
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise CompareError(str(cause)) from None
            lines = [line for line in str(cause).strip().splitlines() if line.strip()]
            yield spec, None, (lines[-1] if lines else type(cause).__name__)


def _collect(results, specs, protocol) -> list[dict]:
    """Rows of every run in `specs` order, with one progress bar over runs on stderr and each result printed as it
    arrives; CompareError naming the failed runs (the finished ones are kept)."""
    from tqdm import tqdm

    keys = list(COCO_KEYS if protocol == "coco" else VISDRONE_KEYS)
    rows, failed = {}, []
    with tqdm(total=len(specs), desc="runs", unit="run", file=sys.stderr, dynamic_ncols=True) as bar:
        for spec, row, error in results:
            if error is None:
                rows[spec["variant"], spec["seed"]] = row
                bar.write(_summary_line(row, keys), file=sys.stdout)
            else:
                failed.append(f"{spec['variant']} seed {spec['seed']} ({Path(spec['folder']) / 'train.log'}): {error}")
                bar.write(f"failed: {failed[-1]}", file=sys.stderr)
            bar.update(1)
    if failed:
        raise CompareError(f"{len(failed)} of {len(specs)} runs failed, the others are kept; re-run the same command "
                           f"to finish them. First: {failed[0]}")
    return [rows[sp["variant"], sp["seed"]] for sp in specs]


def _costs(out, sources, imgsz, device, threads, ray, gpus_per_run, cpus_per_run, marker, token) -> dict:
    """Params, GFLOPs and latency of every variant, measured once on one machine (cached in `costs.json`)."""
    cache = out / "costs.json"
    if cache.is_file():
        costs = json.loads(cache.read_text())
        if costs["sources"] == sources and costs["imgsz"] == imgsz:
            return costs
    print(f"measuring params, GFLOPs and latency of {len(sources)} variants, interleaved ...", file=sys.stderr)
    if ray is None:
        costs = measure_costs(sources, imgsz, device, threads)
    else:  # one task times every variant, on one worker
        task = ray.remote(max_calls=1, max_retries=0)(_ray_costs)
        costs = ray.get(task.options(num_cpus=cpus_per_run, num_gpus=gpus_per_run).remote(
            sources, imgsz, device, threads, marker, token))
    costs["sources"] = sources
    cache.write_text(json.dumps(costs, indent=2))
    return costs


def _results(out, data, protocol, variants, seeds, runs, costs, resamples, train, folders) -> dict:
    keys = list(COCO_KEYS if protocol == "coco" else VISDRONE_KEYS)
    per_variant = costs["variants"]
    if not train:
        rows = [{"variant": v, "model": Path(costs["sources"][v]).name, **{k: per_variant[v][k] for k in
                 ("params", "GFLOPs", "latency_ms", "latency_iqr_ms")}} for v in variants]
        results = {"runs": rows, "latency": _latency_info(costs)}
        print(report.write_costs(out, results))
        return results
    for row in runs:
        row.update({k: per_variant[row["variant"]][k] for k in ("params", "GFLOPs", "latency_ms")})
    extra = [k for k in ("transferred", "start_AP") if k in runs[0]]
    reference = "baseline" if "baseline" in variants else variants[0]
    gt = load_ground_truth(data)
    deltas = _intervals(gt, protocol, variants, seeds, reference, folders, resamples)
    results = {"protocol": protocol, "images": len(gt.coco["images"]), "seeds": seeds, "reference": reference,
               "metrics": keys, "latency": _latency_info(costs), "runs": runs,
               "summary": report.summary_rows(runs, variants, keys + extra, per_variant),
               "deltas": report.deltas_rows(deltas)}
    md = report.write_results(out, results)
    report.plots(out, results, folders)
    print(md)
    return results


def _latency_info(costs):
    return {k: costs[k] for k in ("device", "threads", "rounds", "imgsz", "host")}


def _intervals(gt, protocol, variants, seeds, reference, folders, resamples) -> dict:
    """variant -> `paired_bootstrap` of it against `reference` over every seed (matching each run once)."""
    from tqdm import tqdm

    matched = {}
    for (variant, seed), folder in tqdm(folders.items(), desc="matching runs", unit="run", file=sys.stderr):
        matched[variant, seed] = match(gt, read_predictions(folder), protocol, str(folder))
    others = [v for v in variants if v != reference]
    intervals = {}
    with tqdm(total=resamples * len(others), desc="bootstrap", unit="resample", file=sys.stderr) as bar:
        for variant in others:
            intervals[variant] = paired_bootstrap([matched[reference, s] for s in seeds],
                                                  [matched[variant, s] for s in seeds], resamples,
                                                  progress=lambda i: bar.update(1))
    return intervals
