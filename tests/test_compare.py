"""The ablation harness end to end on a tiny generated set, resume after an interruption, and the cost columns."""

import json
import subprocess
import sys
import time

import pytest
import torch

from ema_yolo.ablation.compare import count_gflops, run_compare
from ema_yolo.ablation.variants import variant_cfg
from ema_yolo.cli import main as cli


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


def test_compare_end_to_end_relative_out_killed_and_resumed(tiny_dataset, stock_yolov8n_nc3, tmp_path, monkeypatch):
    # The README's form, a relative --out, from another folder: Ultralytics alone would put the weights under its own
    # runs folder. The command is killed (SIGKILL) once the first variant is done, then interrupted in the second
    # variant's first epoch: each re-run of the same command continues, never retraining what is finished.
    command = ["compare", "--data", str(tiny_dataset), "--variants", "baseline,ema", "--out", "runs/compare/tiny",
               "--epochs", "2", "--imgsz", "64", "--batch", "8", "--workers", "0", "--pretrained", str(stock_yolov8n_nc3)]
    out = tmp_path / "runs" / "compare" / "tiny"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ema_yolo", *command], cwd=tmp_path, stdout=log, stderr=log)
        deadline = time.monotonic() + 300
        while not (out / "baseline" / "done.json").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.kill()
        proc.wait()
    assert (out / "baseline" / "done.json").is_file(), (tmp_path / "killed.log").read_text()[-3000:]
    baseline_done = (out / "baseline" / "done.json").stat().st_mtime_ns
    assert not (out / "ema" / "weights" / "last.pt").exists()  # killed before the second variant saved an epoch

    interrupted = []

    def interrupt_ema_after_first_epoch(model):
        if str(model.cfg or "").endswith("-ema.yaml") and not interrupted:
            def stop(trainer):
                interrupted.append(trainer.epoch)
                raise KeyboardInterrupt

            model.add_callback("on_fit_epoch_end", stop)

    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_compare(tiny_dataset, "yolov8", "n", ["baseline", "ema"], "runs/compare/tiny", epochs=2, imgsz=64, batch=8,
                    workers=0, pretrained=stock_yolov8n_nc3, on_model=interrupt_ema_after_first_epoch)
    assert interrupted == [0] and not (out / "ema" / "done.json").exists()
    assert (out / "ema" / "weights" / "last.pt").is_file()

    assert cli(command) == 0
    assert (out / "baseline" / "done.json").stat().st_mtime_ns == baseline_done  # never retrained
    epochs_run = (out / "ema" / "results.csv").read_text().strip().splitlines()[1:]
    assert len(epochs_run) == 2  # resumed at epoch 2, not restarted
    assert sorted(p.relative_to(out).as_posix() for p in tmp_path.rglob("*.pt")) == [
        f"{v}/weights/{w}.pt" for v in ("baseline", "ema") for w in ("best", "last")]  # nothing elsewhere
    rows = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in rows] == ["baseline", "ema"]
    assert [r["transferred"] for r in rows] == [1.0, 1.0]  # every stock value landed in both, recorded before the resume
    assert json.loads((out / "ema" / "transfer.json").read_text())["new_layers"] == ["model.7 EMA", "model.10 EMA"]
    assert rows[1]["params"] - rows[0]["params"] == (10 * 4**2 + 4 * 4) + (10 * 8**2 + 4 * 8)  # yolov8n: EMA(128), EMA(256)
    for row in rows:
        assert 0.0 <= row["AP"] <= 1.0 and row["GFLOPs"] > 0 and row["latency_ms"] > 0
        assert row["APl"] is None and row["ARl"] is None  # 64 px images hold no large (> 96^2 px) object: undefined
    assert rows[1]["GFLOPs"] > rows[0]["GFLOPs"]
    for name in ("results.md", "results.csv", "results.json", "map_vs_latency.png", "training_curves.png"):
        assert (out / name).is_file(), name
    table = (out / "results.csv").read_text().splitlines()
    column = table[0].split(",").index("APl")
    assert [line.split(",")[column] for line in table[1:]] == ["n/a", "n/a"]
    md = [line.split(" | ") for line in (out / "results.md").read_text().splitlines()]
    assert [r[column] for r in md[2:]] == ["n/a", "n/a"]


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

    assert main(["--no-train", "--family", "yolov8", "--variants", "baseline,c2f-ema", "--imgsz", "64", "--out", str(tmp_path / "cost")]) == 0
    rows = json.loads((tmp_path / "cost" / "results.json").read_text())
    assert [r["model"] for r in rows] == ["yolov8n.yaml", "yolov8n-c2f-ema.yaml"]
    # yolov8n's ten C2f bottlenecks: 1 of 16 channels, 3 of 32, 4 of 64, 2 of 128 -> EMA with cg = 1, 1, 2, 4
    assert rows[1]["params"] - rows[0]["params"] == 1 * 14 + 3 * 14 + 4 * (10 * 2**2 + 4 * 2) + 2 * (10 * 4**2 + 4 * 4)
    assert rows[1]["GFLOPs"] > rows[0]["GFLOPs"] and rows[1]["latency_ms"] > 0


def test_eca_is_a_variant_row_and_in_block(tmp_path):
    from ema_yolo.ablation.commands import main

    assert main(["--no-train", "--family", "yolov8", "--variants", "baseline,eca,c2f-eca", "--imgsz", "64",
                 "--out", str(tmp_path / "cost")]) == 0
    rows = json.loads((tmp_path / "cost" / "results.json").read_text())
    assert [r["model"] for r in rows] == ["yolov8n.yaml", "yolov8n-eca.yaml", "yolov8n-c2f-eca.yaml"]
    # ECA rows after yolov8n's 128- and 256-channel P4/P5 blocks: one 1-D kernel each, k = 5 for both (paper's rule)
    assert rows[1]["params"] - rows[0]["params"] == 5 + 5
    # in-block: one kernel per bottleneck, 1 of 16 channels, 3 of 32, 4 of 64 (k = 3), 2 of 128 (k = 5)
    assert rows[2]["params"] - rows[0]["params"] == (1 + 3 + 4) * 3 + 2 * 5
