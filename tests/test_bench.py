"""`ema-yolo bench module`: runs, reports both modules side by side, rejects malformed shapes (no timing asserts)."""

import json

import pytest

from ema_yolo.commands import bench as main


def test_bench_module_writes_rows_for_the_requested_shapes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["module", "--shapes", "2x64x8x8", "1x48x5x3", "--repeats", "1", "--rounds", "1", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["shape"] for r in rows] == [[2, 64, 8, 8], [1, 48, 5, 3]]
    for r in rows:
        assert r["reference forward+backward ms"] > 0 and r["fast forward+backward ms"] > 0
        ratio = r["reference forward+backward ms"] / r["fast forward+backward ms"]
        assert r["forward+backward speed-up"] == pytest.approx(ratio, rel=0.02, abs=0.006)  # ms to 1 us, ratios to 0.01
    assert "| [2, 64, 8, 8] |" in capsys.readouterr().out


def test_bench_writes_no_file_unless_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["module", "--shapes", "1x32x4x4", "--repeats", "1", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "| [1, 32, 4, 4] |" in out and "wrote" not in out
    assert list(tmp_path.iterdir()) == []


def test_bench_roofline_reports_passes_for_every_implementation(tmp_path, capsys):
    out = tmp_path / "roofline.json"
    main(["roofline", "--shapes", "2x64x8x8", "--no-compile", "--repeats", "1", "--rounds", "1", "--json", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["shape"] == [2, 64, 8, 8] and row["pass ms warm"] > 0 and row["pass ms cold"] > 0
    keys = [f"{m} {p} passes {t}" for m in ("EMA", "EMAReference") for p in ("forward", "forward+backward")
            for t in ("warm", "cold")]
    assert all(row[k] > 0 for k in keys) and not any("compiled" in k for k in row)
    assert "EMAReference forward+backward passes cold" in capsys.readouterr().out


def test_bench_rejects_a_malformed_shape(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["module", "--shapes", "8x256x20"])
    assert exit_info.value.code == 2
    assert "shape must look like 8x256x20x20" in capsys.readouterr().err


def test_step_bench_swaps_in_the_published_ema_with_the_same_weights(tmp_path):
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from ema_yolo.bench import with_reference_ema
    from ema_yolo.nn import EMA, EMAReference

    model = DetectionModel("yolov8n-ema.yaml", verbose=False).eval()
    swapped = with_reference_ema(model)
    kinds = lambda m: [type(x) for x in m.modules() if isinstance(x, (EMA, EMAReference))]  # noqa: E731
    assert kinds(model) == [EMA, EMA] and kinds(swapped) == [EMAReference, EMAReference]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.allclose(swapped(x)[0], model(x)[0], atol=1e-4, rtol=1e-4)

    for family, cfg in (("yolov8", "yolov8n-ema.yaml"), ("yolo26", "yolo26n-ema.yaml")):
        out = tmp_path / f"step-{family}.json"
        main(["step", "--family", family, "--scale", "n", "--imgsz", "64", "--batch", "1", "--repeats", "1",
              "--rounds", "1", "--json", str(out)])
        result = json.loads(out.read_text())
        assert result["model"] == cfg and result["baseline s/step"] > 0
        assert result["EMAReference cost"].endswith("%")
