"""`ema-yolo compare`'s results: the "runs", "summary" and "deltas" of `results.json`, the same in `results.md` and
`results.csv`, and the plots.

`results.json`:
- "runs": one row per (variant, seed): `variant`, `seed`, `model`, the protocol's summary metrics (`AP`, `AP50`, ...
  in [0, 1], null where undefined), `params`, `GFLOPs`, `latency_ms`, and with `--pretrained` `transferred` and
  `start_AP`;
- "summary": one row per variant: `variant`, `n_seeds`, and per metric `{"mean", "std"}` (sample standard deviation
  over seeds, null with one seed); `params`, `GFLOPs`; `latency_ms` `{"median", "iqr"}` over the interleaved rounds;
- "deltas": one row per (variant other than the reference, summary metric): `variant`, `metric`, `mean` (mean over
  seeds of variant minus reference at the same seed), `ci95` [lo, hi] (paired percentile bootstrap over the validation
  images, `ema_yolo.eval.bootstrap.paired_bootstrap`), `seed_std`, `resamples`;
- "reference", "protocol", "images" (validation images), "seeds", "latency" (how it was timed).

`results.csv` holds the same, one value per line: `table,variant,seed,field,statistic,value`.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from ..eval.protocols import format_metric

__all__ = ("deltas_rows", "summary_rows", "verdict", "write_results")

NAMES = {"AP": "mAP50-95", "AP50": "mAP50"}


def _mean_std(values):
    if any(v is None for v in values) or not values:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None}


def summary_rows(runs: list[dict], variants: list[str], keys: list[str], costs: dict) -> list[dict]:
    """One row per variant: `n_seeds`, `{"mean", "std"}` of every metric in `keys`, and its cost."""
    rows = []
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        row = {"variant": variant, "n_seeds": len(mine)}
        row.update({k: _mean_std([r[k] for r in mine]) for k in keys if k in mine[0]})
        cost = costs[variant]
        row.update(params=cost["params"], GFLOPs=cost["GFLOPs"],
                   latency_ms={"median": cost["latency_ms"], "iqr": cost["latency_iqr_ms"]})
        rows.append(row)
    return rows


def deltas_rows(intervals: dict[str, dict]) -> list[dict]:
    """`paired_bootstrap` results (variant -> metric -> fields) as rows."""
    return [{"variant": variant, "metric": metric, **fields}
            for variant, per_metric in intervals.items() for metric, fields in per_metric.items()]


def _points(value):
    return f"{100 * value:+.2f}"


def verdict(delta: dict, reference: str, n_seeds: int, images: int) -> str:
    """The plain sentence for a variant's mAP50-95 difference, e.g. "ema vs baseline: +0.41 mAP50-95, 95% interval
    [-0.12, +0.93] over 3 seeds and 548 validation images: not distinguishable from zero." (points = 100 x AP)."""
    head = f"{delta['variant']} vs {reference}:"
    seeds = f"{n_seeds} seed{'s' if n_seeds > 1 else ''}"
    if delta["mean"] is None or delta["ci95"] is None:
        return f"{head} mAP50-95 is undefined on this validation set (no ground truth to score)."
    lo, hi = delta["ci95"]
    if lo > 0:
        reading = "above zero"
    elif hi < 0:
        reading = "below zero"
    else:
        reading = "not distinguishable from zero"
    return (f"{head} {_points(delta['mean'])} mAP50-95, 95% interval [{_points(lo)}, {_points(hi)}] over {seeds} and "
            f"{images} validation images: {reading}.")


def _cell(value):
    if value is None:
        return format_metric(None)
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _table(header, rows):
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _markdown(results: dict) -> str:
    keys, runs, reference = results["metrics"], results["runs"], results["reference"]
    extra = [k for k in ("transferred", "start_AP") if runs and k in runs[0]]
    lat = results["latency"]
    threads = f", {lat['threads']} threads" if lat.get("threads") else ""
    lines = [f"# ema-yolo compare: {results['protocol']} protocol, {results['images']} validation images, "
             f"seeds {', '.join(map(str, results['seeds']))}", "",
             "## Runs (metrics in [0, 1])", ""]
    header = ["variant", "seed", "model", *keys, *extra, "params", "GFLOPs", "latency_ms"]
    lines += _table(header, [[_cell(r.get(k)) for k in header] for r in runs])
    lines += ["", "## Summary (mean ± sample std over seeds)", ""]

    def mean_std(cell):
        if cell["mean"] is None:
            return format_metric(None)
        return f"{cell['mean']:.4f}" + (f" ± {cell['std']:.4f}" if cell["std"] is not None else "")

    header = ["variant", "n_seeds", *keys, *extra, "params", "GFLOPs", "latency_ms (median [IQR])"]
    rows = []
    for s in results["summary"]:
        lat_cell = f"{s['latency_ms']['median']:.2f} [{s['latency_ms']['iqr'][0]:.2f}, {s['latency_ms']['iqr'][1]:.2f}]"
        rows.append([s["variant"], str(s["n_seeds"]), *(mean_std(s[k]) for k in keys + extra), _cell(s["params"]),
                     _cell(s["GFLOPs"]), lat_cell])
    lines += _table(header, rows)
    lines += ["", f"Latency: batch 1, {lat['imgsz']} px, {lat['device']}{threads}, on one machine ({lat['host']}); the "
              f"variants timed interleaved, one pass each per round, {lat['rounds']} rounds; median and interquartile "
              "range over the rounds."]
    if "start_AP" in extra:
        starts = sorted({r["start_AP"] for r in runs if r["start_AP"] is not None})
        same = "the same for every run" if len(starts) == 1 else f"from {starts[0]:.4f} to {starts[-1]:.4f}"
        lines += ["", f"start_AP: mAP50-95 of each run's transferred model before any training step (`start.pt`), "
                  f"same protocol: {same}."]
    lines += ["", f"## Differences from {reference} (points = 100 x metric)", "",
              f"Mean over seeds of (variant - {reference}) at the same seed; 95% paired percentile bootstrap interval "
              f"over the {results['images']} validation images, each resample applied to every seed's runs of both "
              "variants (the seeds themselves are not resampled: the interval covers the validation images, not "
              "another set of seeds); seed std = sample standard deviation of the per-seed differences.", ""]
    rows = []
    for d in results["deltas"]:
        ci = "n/a" if d["ci95"] is None else f"[{_points(d['ci95'][0])}, {_points(d['ci95'][1])}]"
        rows.append([d["variant"], NAMES.get(d["metric"], d["metric"]),
                     "n/a" if d["mean"] is None else _points(d["mean"]), ci,
                     "n/a" if d["seed_std"] is None else f"{100 * d['seed_std']:.2f}", str(d["resamples"])])
    lines += _table(["variant", "metric", "mean", "95% interval", "seed std", "resamples"], rows)
    lines += [""] + [verdict(d, reference, len(results["seeds"]), results["images"])
                     for d in results["deltas"] if d["metric"] == "AP"]
    return "\n".join(lines) + "\n"


def _csv_lines(results: dict):
    """Every value of "runs", "summary" and "deltas" as (table, variant, seed, field, statistic, value)."""
    for r in results["runs"]:
        for field, value in r.items():
            if field not in ("variant", "seed"):
                yield "run", r["variant"], r["seed"], field, "", value
    for s in results["summary"]:
        for field, value in s.items():
            if field == "variant":
                continue
            if isinstance(value, dict):
                for statistic, v in value.items():
                    if isinstance(v, list):
                        yield from (("summary", s["variant"], "", field, f"{statistic}_{q}", x)
                                    for q, x in zip(("lo", "hi"), v))
                    else:
                        yield "summary", s["variant"], "", field, statistic, v
            else:
                yield "summary", s["variant"], "", field, "", value
    for d in results["deltas"]:
        for statistic in ("mean", "ci95", "seed_std", "resamples"):
            value = d[statistic]
            if statistic == "ci95":
                for q, x in zip(("lo", "hi"), value or (None, None)):
                    yield "delta", d["variant"], "", d["metric"], f"ci95_{q}", x
            else:
                yield "delta", d["variant"], "", d["metric"], statistic, value


def write_results(out: Path, results: dict) -> str:
    """Write `results.json`, `results.csv` and `results.md` into `out`; return the Markdown."""
    (out / "results.json").write_text(json.dumps(results, indent=2))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["table", "variant", "seed", "field", "statistic", "value"])
        writer.writerows([*line[:5], format_metric(None) if line[5] is None else line[5]] for line in _csv_lines(results))
    md = _markdown(results)
    (out / "results.md").write_text(md)
    return md


def plots(out: Path, results: dict, folders: dict[tuple[str, int], Path]) -> None:
    """`map_vs_latency.png` (error bars: std over seeds, latency IQR), `deltas.png` (forest plot of every variant's
    difference from the reference with its 95% interval) and `training_curves.png` (mean over seeds, min-max band)."""
    import csv as csv_module

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for s in results["summary"]:
        if s["AP"]["mean"] is None:
            continue
        lat = s["latency_ms"]
        xerr = [[lat["median"] - lat["iqr"][0]], [lat["iqr"][1] - lat["median"]]]
        ax.errorbar(lat["median"], s["AP"]["mean"], yerr=s["AP"]["std"] or 0, xerr=xerr, fmt="o", capsize=4)
        ax.annotate(s["variant"], (lat["median"], s["AP"]["mean"]), textcoords="offset points", xytext=(6, 6))
    ax.set(xlabel="latency, batch 1 (ms; bars: interquartile range)", ylabel="mAP50-95 (bars: std over seeds)",
           title=f"accuracy vs latency, {len(results['seeds'])} seed(s)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "map_vs_latency.png", dpi=120)
    plt.close(fig)

    shown = [m for m in ("AP", "AP50") if any(d["metric"] == m for d in results["deltas"])]
    fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(5.5 * max(len(shown), 1), 1.2 + 0.5 * len(results["summary"])),
                             squeeze=False)
    for ax, metric in zip(axes[0], shown):
        rows = [d for d in results["deltas"] if d["metric"] == metric and d["mean"] is not None]
        for y, d in enumerate(rows):
            lo, hi = d["ci95"] if d["ci95"] else (d["mean"], d["mean"])
            ax.errorbar(100 * d["mean"], y, xerr=[[100 * (d["mean"] - lo)], [100 * (hi - d["mean"])]], fmt="o", capsize=4)
        ax.axvline(0, color="gray", lw=1)
        ax.set_yticks(range(len(rows)), [d["variant"] for d in rows])
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set(xlabel=f"{NAMES[metric]} - {results['reference']} (points), 95% interval", title=NAMES[metric])
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(out / "deltas.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for variant in [s["variant"] for s in results["summary"]]:
        curves = []
        for (v, _), folder in folders.items():
            if v == variant and (folder / "results.csv").is_file():
                with open(folder / "results.csv") as f:
                    table = list(csv_module.DictReader(f))
                curves.append([(float(r["metrics/mAP50-95(B)"]), float(r["train/box_loss"])) for r in table])
        if not curves:
            continue
        n = min(map(len, curves))
        values = np.array([c[:n] for c in curves])  # (seeds, epochs, 2)
        epochs = np.arange(1, n + 1)
        for ax, j in zip(axes, (0, 1)):
            line = ax.plot(epochs, values[:, :, j].mean(0), marker="o", label=f"{variant} ({len(curves)} seeds)")[0]
            ax.fill_between(epochs, values[:, :, j].min(0), values[:, :, j].max(0), color=line.get_color(), alpha=0.2)
    axes[0].set(xlabel="epoch", ylabel="val mAP50:95 (Ultralytics)", title="validation mAP: mean, band min-max over seeds")
    axes[1].set(xlabel="epoch", ylabel="train box loss", title="training loss: mean, band min-max over seeds")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=120)
    plt.close(fig)


def write_costs(out: Path, results: dict) -> str:
    """`--no-train`: `results.json` ("runs": one row per variant: `params`, `GFLOPs`, `latency_ms`,
    `latency_iqr_ms`; "latency": how it was timed), the same in `results.csv` and `results.md`; return the Markdown."""
    (out / "results.json").write_text(json.dumps(results, indent=2))
    rows = results["runs"]
    header = list(rows[0])
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([r[k] for k in header] for r in rows)
    lat = results["latency"]
    lines = _table(header, [[_cell(r[k]) if k != "latency_iqr_ms" else str(r[k]) for k in header] for r in rows])
    lines += ["", f"Latency: batch 1, {lat['imgsz']} px, {lat['device']}" + (f", {lat['threads']} threads" if
              lat.get("threads") else "") + f", variants timed interleaved, {lat['rounds']} rounds."]
    md = "\n".join(lines) + "\n"
    (out / "results.md").write_text(md)
    return md
