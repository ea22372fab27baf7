"""`ema-yolo bench module`: runs, reports both modules side by side, rejects malformed shapes (no timing asserts)."""

import json

import pytest

from ema_yolo.bench import main


def test_bench_module_writes_rows_for_the_requested_shapes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["module", "--shapes", "2x64x8x8", "1x48x5x3", "--repeats", "1", "--rounds", "1", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["shape"] for r in rows] == [[2, 64, 8, 8], [1, 48, 5, 3]]
    for r in rows:
        assert r["reference forward+backward ms"] > 0 and r["fast forward+backward ms"] > 0
        ratio = r["reference forward+backward ms"] / r["fast forward+backward ms"]
        assert r["forward+backward speed-up"] == pytest.approx(ratio, abs=0.01)
    assert "| [2, 64, 8, 8] |" in capsys.readouterr().out


def test_bench_rejects_a_malformed_shape(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["module", "--shapes", "8x256x20"])
    assert exit_info.value.code == 2
    assert "shape must look like 8x256x20x20" in capsys.readouterr().err
