"""`ema-yolo check-device` on CPU: a smaller part of its quick run (correctness, determinism, path, the step's
accounting), its report and its refusal of a device this torch cannot use."""

import json

import pytest
import torch

from ema_yolo import check_device
from ema_yolo.commands import check_device as check_device_command


def test_check_device_reports_correctness_determinism_and_path(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(check_device, "_shapes", lambda quick: [(1, 64, 6, 5), (2, 48, 3, 4)])  # 48: 24 groups
    out = tmp_path / "report.json"
    code = check_device_command(["--device", "cpu", "--quick", "--json", str(out),
                              "--sections", "versions", "correctness", "determinism", "path"])
    assert code == 0
    report = json.loads(out.read_text())["cpu"]
    assert report["versions"]["torch"] == torch.__version__ and report["versions"]["ultralytics"]
    rows = report["correctness"]
    assert {r["mode"] for r in rows} == set(check_device.TOLERANCES) and len(rows) == 2 * len(check_device.TOLERANCES)
    for r in rows:  # each within its stated tolerance, in the input's dtype
        assert r["pass"] and r["output dtype"] == ("float32" if r["mode"].startswith("float32") else r["mode"][:-9])
        assert r["forward error"] <= check_device.TOLERANCES[r["mode"]][0]
    assert all(r["EMA"] == "bit-identical" and r["published"] == "bit-identical" for r in report["determinism"])
    for r in report["path"]:  # CPU: the measured rule, with both timings
        assert r["decision"] == "operator" and r["operator ms"] > 0 and r["published structure ms"] > 0
    printed = capsys.readouterr().out
    assert "## correctness" in printed and "all checks passed" in printed and f"wrote {out}" in printed


def test_correctness_fails_a_wrong_implementation(monkeypatch):
    # The check can fail: an EMA whose output is off by 1e-3 relative breaks the float32 tolerance.
    from ema_yolo.nn import EMA

    forward = EMA.forward
    monkeypatch.setattr(EMA, "forward", lambda self, x: forward(self, x) * 1.001)
    rows = check_device.correctness(torch.device("cpu"), [(1, 32, 4, 4)])
    assert not any(r["pass"] for r in rows if r["mode"].startswith("float32"))


def test_saved_bytes_count_each_storage_once():
    counter = check_device._SavedBytes()
    x = torch.randn(1000, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        y = (x * x).sin()  # x saved twice by mul (one storage), x * x once by sin
    assert counter.total == 2 * 1000 * 4
    y.sum().backward()


def test_check_device_refuses_an_unavailable_device(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without CUDA, whatever this one has
    with pytest.raises(SystemExit) as exit_info:
        check_device_command(["--device", "0"])
    assert exit_info.value.code == 2 and "device '0' is not available" in capsys.readouterr().err


def test_compile_section_compares_compiled_with_eager():
    (row,) = check_device.compile_check(torch.device("cpu"), quick=True)
    assert row["model"] == "EMA(64)" and row["graphs"] == 1 and row["graph breaks"] == 0
    assert row["worst relative error"] <= row["tolerance"] and row["pass"]


def test_float32_sections_turn_tf32_off_and_restore_the_users_settings():
    # cuDNN's TF32 default on CUDA would be measured as EMA's error; the user's settings come back, even after an
    # error, through the same API (mixing the fp32_precision and allow_tf32 APIs makes the getters raise).
    torch.set_float32_matmul_precision("medium")
    switches = check_device._tf32_switches()
    before = [getattr(obj, name) for obj, name, _ in switches]
    try:
        with pytest.raises(RuntimeError), check_device._ieee_float32():
            assert [getattr(obj, name) for obj, name, _ in switches] == [value for _, _, value in switches]
            raise RuntimeError("a failing section")
        assert [getattr(obj, name) for obj, name, _ in switches] == before
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision("highest")


def test_check_device_runs_float32_sections_without_tf32(monkeypatch):
    seen = {}  # section -> [each TF32 switch at its IEEE float32 value, while the section ran]

    def recording(section):
        def run(*args):
            seen[section] = [getattr(obj, name) == value for obj, name, value in check_device._tf32_switches()]
            return []

        return run

    monkeypatch.setattr(check_device, "correctness", recording("correctness"))
    monkeypatch.setattr(check_device, "compile_check", recording("compile"))
    check_device.check_device(torch.device("cpu"), quick=True, sections=["correctness", "compile"])
    assert seen == {"correctness": [True, True], "compile": [True, True]}
