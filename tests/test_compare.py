"""The ablation harness on a tiny generated set: seeds, the results contract, the same runs sequentially and on a local
Ray runtime (killed mid-way, finished by re-running), the transferred start, and the cost columns.

The trainings are shared: one sequential comparison (2 variants x 2 seeds, in this process) and one under Ray (the
same command, in subprocesses); the asserts read their folders.
"""

import gzip
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from ema_yolo.ablation.compare import MARKER, run_compare
from ema_yolo.ablation.runs import START, CompareError, count_gflops, evaluate_start, run_one
from ema_yolo.ablation.variants import variant_cfg
from ema_yolo.eval.protocols import COCO_KEYS

VARIANTS, SEEDS = ["baseline", "ema"], [0, 1]
RUNS = [(v, s) for s in SEEDS for v in VARIANTS]


def _command(data, out, pretrained, *extra):
    return ["compare", "--data", str(data), "--variants", ",".join(VARIANTS), "--seeds", ",".join(map(str, SEEDS)),
            "--out", str(out), "--epochs", "1", "--imgsz", "64", "--batch", "8", "--workers", "0",
            "--pretrained", str(pretrained), "--resamples", "200", *extra]


@pytest.fixture(scope="module")
def sequential(tiny_dataset, stock_yolov8n_nc3, tmp_path_factory):
    """2 variants x 2 seeds in this process, one torch thread; the hash of every training batch, per run."""
    out = tmp_path_factory.mktemp("sequential") / "cmp"
    batches = {}

    def record_batches(model):
        def wrap(trainer):
            key = (model.cfg, trainer.args.seed)
            batches[key], preprocess = [], trainer.preprocess_batch

            def recorded(batch):  # the images and boxes after augmentation, as the model gets them
                batches[key].append(hash((batch["img"].numpy().tobytes(), batch["bboxes"].numpy().tobytes())))
                return preprocess(batch)

            trainer.preprocess_batch = recorded

        model.add_callback("on_pretrain_routine_end", wrap)

    threads = torch.get_num_threads()
    try:
        results = run_compare(tiny_dataset, "yolov8", "n", VARIANTS, out, epochs=1, imgsz=64, batch=8, workers=0,
                              seeds=SEEDS, pretrained=stock_yolov8n_nc3, threads=1, resamples=200,
                              on_model=record_batches)
    finally:
        torch.set_num_threads(threads)
    return out, results, batches


def _predictions(folder):
    return json.loads(gzip.decompress((folder / "predictions.json.gz").read_bytes()))


def test_seeds_share_data_order_and_augmentations_across_variants(sequential):
    out, results, batches = sequential
    assert sorted(batches) == sorted((variant_cfg("yolov8", "n", v), s) for v, s in RUNS)
    for s in SEEDS:
        assert batches["yolov8n.yaml", s] == batches["yolov8n-ema.yaml", s] and len(batches["yolov8n.yaml", s]) == 2
    assert batches["yolov8n.yaml", 0] != batches["yolov8n.yaml", 1]  # another seed, other batches
    for v, s in RUNS:
        folder = out / v / f"seed{s}"
        assert (folder / "done.json").is_file() and (folder / "weights" / "last.pt").is_file()
        assert yaml.safe_load((folder / "args.yaml").read_text())["seed"] == s


def test_results_contract(sequential):
    out, results, _ = sequential
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    runs = saved["runs"]
    assert [(r["variant"], r["seed"]) for r in runs] == RUNS
    for r in runs:
        assert list(r) == ["variant", "seed", "model", *COCO_KEYS, "transferred", "start_AP", "params", "GFLOPs",
                           "latency_ms"]
        assert r["model"] == variant_cfg("yolov8", "n", r["variant"]) and r["transferred"] == 1.0
        assert all(r[k] is None or 0 <= r[k] <= 1 for k in COCO_KEYS)
        assert r["APl"] is None  # 64 px images hold no large (> 96^2 px) object: undefined
        assert r == json.loads((out / r["variant"] / f"seed{r['seed']}" / "done.json").read_text()) | {
            k: r[k] for k in ("params", "GFLOPs", "latency_ms")}
    by = {(r["variant"], r["seed"]): r for r in runs}
    assert by["ema", 0]["params"] - by["baseline", 0]["params"] == (10 * 4**2 + 4 * 4) + (10 * 8**2 + 4 * 8)
    for s in saved["summary"]:
        mine = [r for r in runs if r["variant"] == s["variant"]]
        assert s["n_seeds"] == 2
        for k in (*COCO_KEYS, "start_AP"):
            values = [r[k] for r in mine]
            if None in values:
                assert s[k] == {"mean": None, "std": None}
            else:
                assert s[k]["mean"] == pytest.approx(statistics.fmean(values), abs=1e-12)
                assert s[k]["std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
        assert s["latency_ms"]["iqr"][0] <= s["latency_ms"]["median"] <= s["latency_ms"]["iqr"][1]
        assert all(r["latency_ms"] == s["latency_ms"]["median"] for r in mine)
    assert [(d["variant"], d["metric"]) for d in saved["deltas"]] == [("ema", k) for k in COCO_KEYS]
    for d in saved["deltas"]:
        differences = [by["ema", s][d["metric"]] - by["baseline", s][d["metric"]] if by["ema", s][d["metric"]]
                       is not None else None for s in SEEDS]
        if None in differences:
            assert d == {"variant": "ema", "metric": d["metric"], "mean": None, "ci95": None, "seed_std": None,
                         "resamples": 0}
            continue
        assert d["mean"] == pytest.approx(statistics.fmean(differences), abs=1e-4)  # runs rows hold all digits
        assert d["seed_std"] == pytest.approx(statistics.stdev(differences), abs=1e-4)
        assert d["ci95"][0] <= d["ci95"][1] and d["resamples"] == 200
    assert saved["images"] == 8 and saved["reference"] == "baseline" and saved["seeds"] == SEEDS
    md = (out / "results.md").read_text().strip().splitlines()
    assert md[-1].startswith("ema vs baseline: ") and md[-1].endswith(("zero.", "zero"))
    assert "over 2 seeds and 8 validation images" in md[-1]
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0] == "table,variant,seed,field,statistic,value"
    assert "run,ema,1,APl,,n/a" in csv_lines and f"summary,ema,,AP,mean,{saved['summary'][1]['AP']['mean']}" in csv_lines
    assert f"delta,ema,,AP,ci95_hi,{saved['deltas'][0]['ci95'][1]}" in csv_lines
    for name in ("map_vs_latency.png", "deltas.png", "training_curves.png"):
        assert (out / name).stat().st_size > 10_000, name
    assert not (out / MARKER).exists()


def test_start_is_the_transferred_model_for_every_variant(sequential, tiny_dataset, stock_yolov8n_nc3, tmp_path):
    """start.pt of every attention variant predicts what the stock checkpoint predicts, so start_AP is the stock
    model's score, the same for every variant (the oracle: Ultralytics' stock model on the checkpoint)."""
    from ema_yolo.eval.predictions import model_predictions
    from ema_yolo.eval.protocols import evaluate, load_ground_truth

    out, results, _ = sequential
    gt = load_ground_truth(tiny_dataset)
    stock = model_predictions(stock_yolov8n_nc3, tiny_dataset, "coco", 64, device="cpu")
    stock_ap = evaluate(gt, stock, "coco")["AP"]
    assert len(stock) > 100
    assert {r["start_AP"] for r in results["runs"]} == {stock_ap}

    class Started(Exception):
        pass

    def stop_before_the_first_step(model):
        model.add_callback("on_train_epoch_start", lambda trainer: (_ for _ in ()).throw(Started()))

    (tmp_path / MARKER).write_text("t")
    settings = dict(data=str(tiny_dataset), epochs=1, imgsz=64, batch=8, device="cpu", workers=0, deterministic=True,
                    pretrained=str(stock_yolov8n_nc3), amp=False, plots=False, verbose=False, seed=0)
    for variant in ["ema", "cbam", "ca", "se", "eca", "c2f-ema"]:
        spec = {"variant": variant, "seed": 0, "cfg": variant_cfg("yolov8", "n", variant), "folder": str(tmp_path / variant),
                "data": str(tiny_dataset), "protocol": "coco", "imgsz": 64, "device": "cpu", "threads": None,
                "settings": settings, "marker": str(tmp_path / MARKER), "token": "t"}
        if variant == "ema":  # the comparison's own start.pt
            spec["folder"] = str(out / "ema" / "seed0")
        else:
            with pytest.raises(Started):
                run_one(spec, stop_before_the_first_step)
        assert (tmp_path / variant / START).is_file() or variant == "ema"
        metrics, predictions = evaluate_start(spec, gt)
        assert metrics["AP"] == stock_ap, variant
        assert len(predictions) == len(stock), variant
        for p, q in zip(predictions, stock):
            assert p["image_id"] == q["image_id"] and p["category_id"] == q["category_id"]
            assert p["score"] == pytest.approx(q["score"], abs=2e-3) and np.allclose(p["bbox"], q["bbox"], atol=0.05)


def test_ray_matches_sequential_and_finishes_a_killed_comparison(sequential, tiny_dataset, stock_yolov8n_nc3, tmp_path):
    """The same command with --ray (local runtime, 2 CPUs): the first invocation is killed (driver, Ray and its
    workers) once a run is done; re-running it finishes only what is missing. Every run equals its sequential twin."""
    pytest.importorskip("ray", reason="the [test] extra installs Ray")
    seq_out = sequential[0]
    out = tmp_path / "cmp"
    # --threads defaults to --cpus-per-run under Ray: 1, as in the sequential comparison
    command = [sys.executable, "-m", "ema_yolo", *_command(tiny_dataset, out, stock_yolov8n_nc3, "--ray", "--cpus-per-run", "1")]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True, env=env)
        deadline = time.monotonic() + 240
        while not list(out.glob("*/seed*/done.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray runtime it started, workers included
        proc.wait()
    finished = {p.parent: p.stat().st_mtime_ns for p in out.glob("*/seed*/done.json")}
    assert finished and len(finished) < len(RUNS), (tmp_path / "killed.log").read_text()[-3000:]
    assert not (out / "results.json").exists()

    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {p: p.joinpath("done.json").stat().st_mtime_ns for p in finished} == finished  # never retrained
    printed = [line for line in rerun.stdout.splitlines() if " seed " in line and "mAP50-95" in line]
    assert len(printed) == len(RUNS)  # each run's result, the finished ones first
    ray_results = json.loads((out / "results.json").read_text())
    seq_results = json.loads((seq_out / "results.json").read_text())
    for ray_run, seq_run in zip(ray_results["runs"], seq_results["runs"]):
        for k, v in seq_run.items():
            if k != "latency_ms":
                assert ray_run[k] == (v if v is None or isinstance(v, str) else pytest.approx(v, abs=1e-6)), k
    for v, s in RUNS:
        ray_predictions, seq_predictions = _predictions(out / v / f"seed{s}"), _predictions(seq_out / v / f"seed{s}")
        assert len(ray_predictions) == len(seq_predictions) > 0
        assert all(p["score"] == pytest.approx(q["score"], abs=1e-6) for p, q in zip(ray_predictions, seq_predictions))
        losses = [(f / v / f"seed{s}" / "results.csv").read_text().splitlines()[1].split(",")[2:5] for f in (out, seq_out)]
        assert losses[0] == losses[1]  # Ultralytics' training losses of the epoch
    costs = json.loads((out / "costs.json").read_text())
    assert costs["threads"] == 1 and costs["pid"] != os.getpid()  # on one Ray worker
    assert (out / "ema" / "seed0" / "train.log").stat().st_size > 0  # Ultralytics' output, not the driver's


def test_shared_file_system_marker(tmp_path):
    marker = tmp_path / MARKER
    marker.write_text("driver's token")
    spec = {"folder": str(tmp_path / "baseline" / "seed0"), "marker": str(marker), "token": "another driver's token"}
    with pytest.raises(CompareError, match="--out must be on a shared file system"):
        run_one(spec)
    assert not (tmp_path / "baseline").exists()


def test_ray_missing_is_one_error_line(tmp_path, monkeypatch, capsys):
    from ema_yolo.ablation.commands import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert main(["--no-train", "--ray", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['error: --ray needs Ray: pip install -e ".[ray]" (or pip install ray)']
    assert not (tmp_path / "out").exists()


def test_variant_names():
    assert variant_cfg("yolov8", "s", "ema") == "yolov8s-ema.yaml"
    assert variant_cfg("yolov5-p2", "x", "baseline") == "yolov5x-p2.yaml"
    assert variant_cfg("yolov5-p2", "x", "cbam") == "yolov5x-p2-cbam.yaml"
    assert variant_cfg("yolo11", "n", "baseline") == "yolo11n.yaml"
    with pytest.raises(ValueError):
        variant_cfg("yolov9", "n", "ema")


def test_gflops_counter_sees_functional_ops():
    # A matmul and a mean inside forward (no module to hook): 2*3*16*32 FLOPs + 3*32 reduced elements.
    class Functional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(16, 32))

        def forward(self, x):
            return torch.matmul(x.reshape(3, 16), self.w).mean(1)  # the input is (1, 3, 4, 4)

    assert count_gflops(Functional(), 4) * 1e9 == pytest.approx(2 * 3 * 16 * 32 + 3 * 32)


def test_in_block_variants_name_their_family_block_and_measure_without_training(tmp_path):
    from ema_yolo.ablation.commands import main

    assert variant_cfg("yolov8", "s", "c2f-ema") == "yolov8s-c2f-ema.yaml"
    assert variant_cfg("yolo11", "x", "c3k2-se") == "yolo11x-c3k2-se.yaml"
    assert variant_cfg("yolov5", "n", "c3-ca") == "yolov5n-c3-ca.yaml"
    with pytest.raises(ValueError, match="needs family 'yolov8'"):
        variant_cfg("yolo11", "n", "c2f-ema")
    with pytest.raises(SystemExit):
        main(["--no-train", "--family", "yolov5-p2", "--variants", "c3-ema", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()

    assert main(["--no-train", "--family", "yolov8", "--variants", "baseline,c2f-ema,eca,c2f-eca", "--imgsz", "64",
                 "--out", str(tmp_path / "cost")]) == 0
    results = json.loads((tmp_path / "cost" / "results.json").read_text())
    rows = results["runs"]
    assert [r["model"] for r in rows] == ["yolov8n.yaml", "yolov8n-c2f-ema.yaml", "yolov8n-eca.yaml", "yolov8n-c2f-eca.yaml"]
    # yolov8n's ten C2f bottlenecks: 1 of 16 channels, 3 of 32, 4 of 64, 2 of 128 -> EMA with cg = 1, 1, 2, 4
    assert rows[1]["params"] - rows[0]["params"] == 1 * 14 + 3 * 14 + 4 * (10 * 2**2 + 4 * 2) + 2 * (10 * 4**2 + 4 * 4)
    assert rows[1]["GFLOPs"] > rows[0]["GFLOPs"] and rows[1]["latency_ms"] > 0
    # ECA rows after yolov8n's 128- and 256-channel P4/P5 blocks: one 1-D kernel each, k = 5 for both (paper's rule)
    assert rows[2]["params"] - rows[0]["params"] == 5 + 5
    # in-block: one kernel per bottleneck, 1 of 16 channels, 3 of 32, 4 of 64 (k = 3), 2 of 128 (k = 5)
    assert rows[3]["params"] - rows[0]["params"] == (1 + 3 + 4) * 3 + 2 * 5
    for r in rows:
        assert r["latency_iqr_ms"][0] <= r["latency_ms"] <= r["latency_iqr_ms"][1]
    assert results["latency"]["rounds"] == 20


@pytest.mark.parametrize("family, variants, models, increments", [
    # EMA adds 10 cg^2 + 4 cg (GroupNorm 2 cg, 1x1 cg^2 + cg, 3x3 9 cg^2 + cg) per layer, cg = channels / 32.
    # yolo26n: after the 128-wide P4 C3k2 (cg 4: 176) and the 256-wide C2PSA (cg 8: 672)
    ("yolo26", "baseline,ema,c3k2-ema", ["yolo26n.yaml", "yolo26n-ema.yaml", "yolo26n-c3k2-ema.yaml"], [848, None]),
    # yolo26n-p2: after the 128- and 64-wide neck blocks, twice each (cg 4: 176, cg 2: 48)
    ("yolo26-p2", "baseline,ema", ["yolo26n-p2.yaml", "yolo26n-p2-ema.yaml"], [2 * 176 + 2 * 48]),
    # yolo12n: after the 128-wide P4 and the 256-wide P5 A2C2f blocks
    ("yolo12", "baseline,cbam", ["yolo12n.yaml", "yolo12n-cbam.yaml"], [None]),
], ids=["yolo26", "yolo26-p2", "yolo12"])  # fmt: skip
def test_new_families_measure_without_training(family, variants, models, increments, tmp_path):
    from ema_yolo.ablation.commands import main

    assert main(["--no-train", "--family", family, "--variants", variants, "--imgsz", "64",
                 "--out", str(tmp_path / family)]) == 0  # fmt: skip
    rows = json.loads((tmp_path / family / "results.json").read_text())["runs"]
    assert [r["model"] for r in rows] == models
    for row, increment in zip(rows[1:], increments):
        assert row["params"] > rows[0]["params"] and row["GFLOPs"] > rows[0]["GFLOPs"]
        if increment is not None:
            assert row["params"] - rows[0]["params"] == increment


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tiny_dataset, tmp_path):
    # Killed after its first epoch (last.pt written, no done.json): re-running the command continues at epoch 2.
    out = tmp_path / "cmp"

    class Killed(Exception):
        pass

    def kill_after_first_epoch(model):
        def stop(trainer):
            if trainer.epoch == 0:
                raise Killed

        model.add_callback("on_fit_epoch_end", stop)

    settings = dict(epochs=2, imgsz=64, batch=8, workers=0, seeds=[0], threads=1, resamples=10)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(Killed):
            run_compare(tiny_dataset, "yolov8", "n", ["baseline"], out, on_model=kill_after_first_epoch, **settings)
        run = out / "baseline" / "seed0"
        assert (run / "weights" / "last.pt").is_file() and not (run / "done.json").exists()
        first = (run / "results.csv").read_text().splitlines()
        assert len(first) == 2  # header and epoch 1
        run_compare(tiny_dataset, "yolov8", "n", ["baseline"], out, **settings)
    finally:
        torch.set_num_threads(threads)
    lines = (run / "results.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[:2] == first  # epoch 1 kept, epoch 2 added: resumed, not restarted
    assert (run / "done.json").is_file()
