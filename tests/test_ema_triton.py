"""EMA's Triton operator against the published module under Triton's interpreter, and the path rule's CUDA-only
branches (Triton, deterministic algorithms, a user's torch.compile) made to run on CPU."""

import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ema_yolo.nn import EMA, EMAReference

pytest.importorskip("triton")  # comes with PyTorch's CUDA wheels; the [test] extra installs it everywhere else

# Run in a fresh interpreter: TRITON_INTERPRET must be set before the kernels are defined. Odd shapes: channels not a
# multiple of the groups (10 with factor 4: 2 groups of 5), 1x1 and 1xW maps, batch 1, a map whose rows span two
# tiles (_BLOCK lowered), float64 and float32.
_PARITY = textwrap.dedent(
    """
    import json, sys, torch
    from ema_yolo.nn import EMA, EMAReference, ema_groups, ema_triton as tri

    assert tri.available("cpu")  # the interpreter runs the kernels on CPU tensors
    tri._BLOCK = 32  # 8 columns -> tiles of 4 rows: a 9-row map takes three
    errors = []
    for shape, factor, dtype in json.loads(sys.argv[1]):
        dtype = getattr(torch, dtype)
        torch.manual_seed(0)
        ref = EMAReference(shape[1], ema_groups(shape[1], factor)).to(dtype)
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(torch.randn_like(p))
        fast = EMA(shape[1], factor).to(dtype)
        fast.load_state_dict(ref.state_dict())
        x = torch.randn(shape, dtype=dtype, requires_grad=True)
        y = tri.ema_triton(x, fast.groups, fast.gn.eps, *fast._params())
        y_ref = ref(x)
        go = torch.randn_like(y_ref)
        grads = torch.autograd.grad(y, [x, *fast.parameters()], go)
        grads_ref = torch.autograd.grad(y_ref, [x, *ref.parameters()], go)
        scale = [1.0] + [max(1.0, g.abs().max().item()) for g in grads_ref]
        errors.append([(y - y_ref).abs().max().item()]
                      + [((a - b).abs().max() / s).item() for a, b, s in zip(grads, grads_ref, scale)])
    print(json.dumps(errors))
    """
)


def test_triton_operator_matches_the_published_module_under_the_interpreter():
    cases = [
        [(1, 10, 5, 3), 4, "float64"],  # 10 channels, factor 4: 2 groups of 5
        [(1, 8, 1, 1), 4, "float64"],  # 1x1 map
        [(1, 6, 1, 7), 2, "float64"],  # 1xW map
        [(2, 6, 9, 8), 2, "float64"],  # batch 2, rows over three tiles
        [(1, 12, 6, 5), 4, "float32"],
    ]
    import json

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _PARITY, json.dumps(cases)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    for (shape, _, dtype), err in zip(cases, errors):
        tol = 1e-10 if dtype == "float64" else 2e-5
        assert max(err) < tol, (shape, dtype, err)  # output, then the input's and the six parameters' gradients


def _pair():
    torch.manual_seed(0)
    ref = EMAReference(64, 16).double()
    fast = EMA(64, 16).double()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


@pytest.fixture
def fake_cuda(monkeypatch):
    """The path rule as on CUDA with Triton: nothing measured, Triton 'available', each candidate recorded when called
    (computed by the operator: the timing is under test, not the kernels) and timed at a fixed cost."""
    from ema_yolo.nn import ema_path

    calls, costs = [], {}
    real = ema_path.path_function

    def path_function(module, name):
        fn = real(module, "operator")
        return lambda x: calls.append(name) or fn(x)

    def fixed_cost(fn, x, params, backward, device):
        fn(x)
        if costs.get(calls[-1]) is None:
            raise RuntimeError(f"{calls[-1]} failed")  # e.g. a compile error
        return costs[calls[-1]]

    monkeypatch.setattr(ema_path, "MEASURED", {})
    monkeypatch.setattr(ema_path, "_triton_available", lambda device: True)
    monkeypatch.setattr(ema_path, "path_function", path_function)
    monkeypatch.setattr("ema_yolo.nn.ema.path_function", path_function)
    monkeypatch.setattr(ema_path, "_cost", fixed_cost)
    return ema_path, calls, costs


def test_path_rule_runs_the_fastest_of_three_and_leaves_out_failures(fake_cuda, caplog):
    ema_path, calls, costs = fake_cuda
    ref, fast = _pair()
    x = torch.randn(2, 64, 6, 5, dtype=torch.float64, requires_grad=True)
    costs.update({"operator": 3.0, "published": 2.0, "triton": 1.0})
    with caplog.at_level(logging.INFO, logger="ema_yolo"):
        y = fast(x)
    assert calls == ["operator", "published", "triton", "triton"]  # timed once each, then run
    assert "published structure 2000.00 ms, Triton operator 1000.00 ms -> triton" in caplog.text
    assert torch.allclose(y, ref(x), atol=1e-9)
    calls.clear()
    fast(x)
    assert calls == ["triton"]  # chosen once per key

    ema_path._chosen.pop(fast, None)  # time this layer again
    costs.update({"triton": None})  # Triton fails: left out; the published structure is the fastest left
    calls.clear()
    fast(x)
    assert calls == ["operator", "published", "triton", "published"]


def test_path_rule_times_only_deterministic_candidates_under_deterministic_algorithms(fake_cuda, monkeypatch):
    ema_path, calls, costs = fake_cuda
    _, fast = _pair()
    x = torch.randn(2, 64, 6, 5, dtype=torch.float64, requires_grad=True)
    costs.update({"operator": 2.0, "published": 0.1, "triton": 1.0})
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        fast(x).sum().backward()
        assert calls == ["operator", "triton", "triton"]
        calls.clear()
        monkeypatch.setattr(ema_path, "_triton_available", lambda device: False)  # the operator alone, untimed
        ema_path._chosen.pop(fast, None)  # time this layer again
        fast(x)
        assert calls == ["operator"] and not ema_path._chosen.get(fast)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def test_path_rule_takes_the_triton_operator_under_torch_compile(fake_cuda, monkeypatch):
    ema_path, calls, _ = fake_cuda
    _, fast = _pair()
    x = torch.randn(1, 64, 4, 4, dtype=torch.float64)
    monkeypatch.setattr(ema_path.torch.compiler, "is_compiling", lambda: True)
    assert ema_path.choose_path(fast, x) == "triton" and not calls  # nothing timed
    monkeypatch.setattr(ema_path, "_triton_available", lambda device: False)
    assert ema_path.choose_path(fast, x) == "operator"


def test_triton_is_unavailable_on_cpu_without_the_interpreter():
    from ema_yolo.nn import ema_path

    assert not ema_path._triton_available("cpu") and ema_path.candidates(torch.device("cpu")) == ["operator", "published"]
