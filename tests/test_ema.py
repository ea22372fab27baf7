"""EMA against the paper-faithful reference, odd inputs, group fallback, and ONNX export with dynamic shapes."""

import io
import logging
import warnings

import pytest
import torch

from ema_yolo.nn import EMA, EMAReference, ema_groups


def _pair(channels, factor, dtype=torch.float64, seed=0):
    """A reference EMA with random (non-default) weights and a fast EMA loaded from its state dict."""
    torch.manual_seed(seed)
    ref = EMAReference(channels, factor).to(dtype)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p))
    fast = EMA(channels, factor).to(dtype)
    fast.load_state_dict(ref.state_dict(), strict=True)
    return ref, fast


@pytest.mark.parametrize(
    "shape,factor",
    [
        ((2, 64, 7, 9), 32),
        ((1, 32, 1, 1), 32),
        ((2, 128, 5, 1), 32),
        ((2, 64, 1, 6), 32),
        ((3, 96, 6, 4), 8),
        ((2, 256, 4, 4), 32),
        ((1, 20, 9, 11), 4),
        ((2, 8, 3, 3), 1),
        ((2, 512, 3, 5), 32),
        ((1, 36, 5, 4), 4),
    ],
)
def test_matches_reference_forward_and_backward(shape, factor):
    ref, fast = _pair(shape[1], factor)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y_ref, y_fast = ref(x), fast(x)
    assert torch.allclose(y_fast, y_ref, atol=1e-9, rtol=0)
    grad_out = torch.randn_like(y_ref)
    g_ref = torch.autograd.grad(y_ref, [x, *ref.parameters()], grad_out)
    g_fast = torch.autograd.grad(y_fast, [x, *fast.parameters()], grad_out)
    for a, b in zip(g_ref, g_fast):
        assert torch.allclose(b, a, atol=1e-9, rtol=0)


@pytest.mark.parametrize("chunk_samples,dtype", [(1, torch.float64), (3, torch.float64), (3, torch.bfloat16)])
def test_chunked_operator_matches_reference(monkeypatch, chunk_samples, dtype):
    # On CPU the operator works in cache-sized chunks of group-samples; chunks of one sample and an uneven last
    # chunk (2 x 16 = 32 samples in chunks of 3) must give the reference's output and every gradient.
    from ema_yolo.nn import ema_function

    ref, fast = _pair(64, 16)
    x = torch.randn(2, 64, 7, 5, dtype=torch.float64)
    acc = torch.promote_types(dtype, torch.float32)  # what the operator computes in, and chunks
    monkeypatch.setattr(ema_function, "CHUNK_BYTES", chunk_samples * 4 * 7 * 5 * acc.itemsize)
    monkeypatch.setattr(ema_function, "CACHE_BYTES", 0)
    assert len(ema_function._chunks(x.to(acc).view(32, 4, 7, 5))[0]) == -(-32 // chunk_samples)
    xin = x.to(dtype).requires_grad_()
    y_fast = fast.to(dtype)(xin)
    y_ref = ref(xin.detach().double().requires_grad_())
    tol = 1e-9 if dtype == torch.float64 else 2e-2
    assert y_fast.dtype == dtype and torch.allclose(y_fast.double(), y_ref, atol=tol, rtol=0)
    grad_out = torch.randn_like(y_ref)
    g_fast = torch.autograd.grad(y_fast, [xin, *fast.parameters()], grad_out.to(dtype))
    g_ref = torch.autograd.grad(y_ref, list(ref.parameters()), grad_out)
    (gx_ref,) = torch.autograd.grad(ref(x.requires_grad_()), x, grad_out)
    for a, b in zip((gx_ref, *g_ref), g_fast):
        assert torch.allclose(b.double(), a, atol=tol * max(1.0, a.abs().max().item()), rtol=0)


def test_device_rule_times_both_paths_where_nothing_was_measured(monkeypatch, caplog):
    # Off the measured devices the first call per key times the operator against the published structure and runs the
    # faster; made to happen on CPU here by emptying the measured table, with fixed costs in place of the clock.
    from torch.utils.checkpoint import checkpoint

    from ema_yolo.nn import ema_path

    ref, fast = _pair(64, 16)
    calls, costs = [], {}
    for name in ("operator", "published"):
        method = getattr(fast, f"_{name}")
        monkeypatch.setattr(fast, f"_{name}", lambda x, name=name, method=method: calls.append(name) or method(x))

    def fixed_cost(fn, x, params, backward, device):
        fn(x)
        return costs[calls[-1]]

    monkeypatch.setattr(ema_path, "MEASURED", {})
    monkeypatch.setattr(ema_path, "_cost", fixed_cost)
    x = torch.randn(2, 64, 6, 5, dtype=torch.float64, requires_grad=True)
    (g_ref,) = torch.autograd.grad(ref(x).sum(), x)
    for slow, expected in (("published", "operator"), ("operator", "published")):
        costs.update({slow: 2.0, expected: 1.0})
        ema_path._chosen.pop(fast, None)  # time this layer again
        with caplog.at_level(logging.INFO, logger="ema_yolo"):
            fast(x)
        assert "with backward: operator 1000.00 ms" in caplog.text or "published structure 1000.00 ms" in caplog.text
        assert caplog.text.rstrip().endswith(f"-> {expected}")
        calls.clear()
        y = checkpoint(fast, x, use_reentrant=False)  # chosen once per key: no more timing, also under checkpointing
        assert calls == [expected, expected] or calls == [expected]
        assert torch.allclose(y, ref(x), atol=1e-9)
        assert torch.allclose(torch.autograd.grad(y.sum(), x)[0], g_ref, atol=1e-9)
        caplog.clear()
    with torch.no_grad():
        fast(x)  # a new key: inference is timed on its own
    fast.float()(x.float().contiguous(memory_format=torch.channels_last))  # and another: dtype and layout
    assert len(ema_path._chosen[fast]) == 3 and all(p.grad is None for p in fast.parameters())
    ema_path._chosen.pop(fast, None)  # time this layer again
    y = checkpoint(fast, x.float(), use_reentrant=False)  # timed inside activation checkpointing: no effect on it
    assert torch.allclose(torch.autograd.grad(y.sum(), x)[0].double(), g_ref, atol=1e-4)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        ema_path._chosen.pop(fast, None)  # time this layer again
        calls.clear()
        fast(x.float())
        assert calls == ["operator"] and not ema_path._chosen.get(fast)
    finally:
        torch.use_deterministic_algorithms(deterministic)


@pytest.mark.parametrize("x_grad,param_grad", [(True, False), (False, True)])
def test_partial_gradients(x_grad, param_grad):
    ref, fast = _pair(64, 16)
    for p in (*ref.parameters(), *fast.parameters()):
        p.requires_grad_(param_grad)
    x = torch.randn(2, 64, 6, 5, dtype=torch.float64, requires_grad=x_grad)
    wrt = [x] if x_grad else list(ref.parameters())
    g_ref = torch.autograd.grad(ref(x).square().sum(), wrt)
    g_fast = torch.autograd.grad(fast(x).square().sum(), [x] if x_grad else list(fast.parameters()))
    for a, b in zip(g_ref, g_fast):
        assert torch.allclose(b, a, atol=1e-9, rtol=0)


def test_backward_reads_saved_tensors_only_and_is_not_twice_differentiable():
    # The backward never writes a saved tensor (a compiler may own them): a retained graph gives the same gradient
    # twice, and the forward run twice before one backward gives twice the gradient of one.
    ref, fast = _pair(64, 32)
    x = torch.randn(2, 64, 6, 5, dtype=torch.float64, requires_grad=True)
    (g_ref,) = torch.autograd.grad(ref(x).sum(), x)
    y = fast(x).sum()
    (g1,) = torch.autograd.grad(y, x, retain_graph=True)
    (g2,) = torch.autograd.grad(y, x)
    (g_twice,) = torch.autograd.grad(fast(x).sum() + fast(x).sum(), x)
    assert torch.allclose(g1, g_ref, atol=1e-9) and torch.equal(g1, g2) and torch.allclose(g_twice, 2 * g_ref, atol=1e-9)
    (g,) = torch.autograd.grad(fast(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


@pytest.mark.parametrize("channels,factor", [(48, 24), (256, 32), (36, 4), (16, 16)])
def test_traced_graph_matches_eager_at_other_sizes(channels, factor):
    # Exporters trace the plain ops (all taps at once, no scratch buffers); eager runs the autograd Function.
    _, fast = _pair(channels, factor)
    traced = torch.jit.trace(fast, torch.randn(2, channels, 8, 8, dtype=torch.float64), check_trace=False)
    for shape in [(3, channels, 11, 5), (1, channels, 1, 1)]:
        x = torch.randn(shape, dtype=torch.float64)
        assert torch.allclose(traced(x), fast(x), atol=1e-12, rtol=0)


def test_torch_compile_traces_the_function(monkeypatch):
    # Dynamo in torch 2.11 traced torch.compiler.is_exporting() as True under torch.compile too, which sent EMA down
    # the exporters' path (and, with an in-place op there, failed the backward on an H200). Made so here: compiling
    # EMA must not run that path.
    import ema_yolo.nn.ema as ema_module

    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    plain, real = [], ema_module.ema_forward  # calls of the exporters' path while torch.compile traces EMA
    monkeypatch.setattr(ema_module, "ema_forward", lambda *a: plain.append(1) or real(*a))
    ref, fast = _pair(64, 32)
    torch._dynamo.reset()
    torch.compile(fast, backend="eager")(torch.randn(1, 64, 4, 4, dtype=torch.float64))
    assert not plain
    compiled = torch.compile(fast, backend="aot_eager")  # dynamo + AOTAutograd, no C++ toolchain needed
    x = torch.randn(2, 64, 9, 7, dtype=torch.float64, requires_grad=True)
    (g_ref,) = torch.autograd.grad(ref(x).square().sum(), x)
    y = compiled(x)
    (g,) = torch.autograd.grad(y.square().sum(), x)
    assert torch.allclose(y, ref(x), atol=1e-9) and torch.allclose(g, g_ref, atol=1e-9)


def test_plain_ops_path_has_the_published_gradients():
    # Under an op observer (a FLOP counter of a training step) and in exports, EMA runs plain ops that autograd
    # differentiates; in-place ops there must not overwrite what their backward reads.
    from torch.utils.flop_counter import FlopCounterMode

    ref, fast = _pair(64, 32)
    x = torch.randn(2, 64, 7, 5, dtype=torch.float64, requires_grad=True)
    with FlopCounterMode(display=False) as count:
        fast(x).square().sum().backward()  # FlopCounterMode counts .backward(), not autograd.grad
    grads = [x.grad, *(p.grad for p in fast.parameters())]
    grads_ref = torch.autograd.grad(ref(x).square().sum(), [x, *ref.parameters()])
    assert count.get_total_flops() > 0
    for g, g_ref in zip(grads, grads_ref):
        assert torch.allclose(g, g_ref, atol=1e-9, rtol=1e-9)


def test_parameters_and_state_dict_layout():
    m = EMA(256)
    assert sum(p.numel() for p in m.parameters()) == 10 * 8**2 + 4 * 8 == 672
    assert list(m.state_dict()) == list(EMAReference(256).state_dict())
    assert [k for k in m.state_dict()] == [
        "gn.weight", "gn.bias", "conv1x1.weight", "conv1x1.bias", "conv3x3.weight", "conv3x3.bias"
    ]


@pytest.mark.parametrize("channels,factor,groups", [(256, 32, 32), (48, 32, 24), (16, 32, 16), (20, 8, 5), (7, 32, 7)])
def test_group_fallback(channels, factor, groups):
    assert ema_groups(channels, factor) == groups
    with warnings.catch_warnings(record=True) as caught:  # a fresh warning registry: no other test's warnings count
        warnings.simplefilter("default")
        for _ in range(2):
            m = EMA(channels, factor)
    assert m.groups == groups and m.group_channels * groups == channels
    # the fallback is exactly the published module run with that many groups
    ref, fast = _pair(channels, groups)
    fast_fallback = EMA(channels, factor).double()
    fast_fallback.load_state_dict(ref.state_dict())
    x = torch.randn(2, channels, 5, 6, dtype=torch.float64)
    assert torch.allclose(fast_fallback(x), ref(x), atol=1e-9)
    reports = [w for w in caught if f"{channels} channels" in str(w.message)]
    assert len(reports) == (0 if groups == factor else 1)  # said once, only when falling back


def test_bad_channel_argument_is_a_clear_error():
    with pytest.raises(TypeError, match="EMA needs a positive int channel count, got 'c2'"):
        EMA("c2")
    with pytest.raises(ValueError, match="built for 64 channels but got an input with 32"):
        EMA(64)(torch.randn(1, 32, 4, 4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast(dtype):
    ref, fast = _pair(64, 32, torch.float32)
    x = torch.randn(2, 64, 12, 10)
    with torch.autocast("cpu", dtype=dtype):
        y = fast(x.to(dtype))
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert torch.allclose(y.float(), ref(x), atol=0.1, rtol=0.05)
    x_low = x.to(dtype).requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        y = fast(x_low)
    y.float().square().sum().backward()  # backward outside autocast, as in Ultralytics' trainer
    y_ref = ref(x.requires_grad_())
    y_ref.square().sum().backward()
    assert x_low.grad.dtype == dtype and torch.allclose(x_low.grad.float(), x.grad, atol=0.1, rtol=0.05)
    for p, q in zip(fast.parameters(), ref.parameters()):
        assert p.grad.dtype == torch.float32 and torch.allclose(p.grad, q.grad, atol=0.2, rtol=0.05)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_weights(dtype):
    # Ultralytics stores checkpoints in half precision; EMA computes in float32 inside, so float16 works on CPU too
    ref, fast = _pair(64, 32, torch.float32)
    x = torch.randn(2, 64, 8, 8)
    fast = fast.to(dtype)
    x_half = x.to(dtype).requires_grad_()
    y = fast(x_half)
    assert y.dtype == dtype and torch.allclose(y.float(), ref(x), atol=0.05, rtol=0.05)
    y.float().square().sum().backward()
    assert x_half.grad.dtype == dtype and all(p.grad.dtype == dtype for p in fast.parameters())


def test_layouts_and_degenerate_inputs():
    ref, fast = _pair(64, 32)
    x = torch.randn(2, 64, 9, 7, dtype=torch.float64)
    expected = ref(x)
    assert torch.allclose(fast(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-9)
    wide = torch.randn(2, 64, 7, 9, dtype=torch.float64).transpose(2, 3)  # non-contiguous
    assert torch.allclose(fast(wide), ref(wide.contiguous()), atol=1e-9)
    assert torch.allclose(fast(x[:1]), expected[:1], atol=1e-9)  # batch 1
    x.requires_grad_()
    (g_ref,) = torch.autograd.grad(ref(x).square().sum(), x)
    (g,) = torch.autograd.grad(fast.to(memory_format=torch.channels_last)(x).square().sum(), x)  # 4-D weights too
    assert torch.allclose(g, g_ref, atol=1e-9)
    meta = torch.empty(2, 64, 9, 7, device="meta", requires_grad=True)  # shape inference, as FLOP counters use
    y = EMA(64).to("meta")(meta)
    y.sum().backward()
    assert y.shape == meta.grad.shape == meta.shape
    for constant in (torch.zeros(1, 64, 5, 5), torch.full((1, 64, 1, 1), 3.0)):
        y = fast.float()(constant)
        assert torch.isfinite(y).all()
    empty = torch.randn(0, 64, 5, 5, requires_grad=True)  # an empty batch: empty output, zero parameter gradients
    grads = torch.autograd.grad(fast(empty).sum(), [empty, *fast.parameters()])
    assert grads[0].shape == empty.shape and all(not g.any() for g in grads[1:])


class _Tail(torch.nn.Module):
    """Reads the batch size like Ultralytics' Detect does: an export that froze EMA's output shape fails here."""

    def forward(self, x):
        return x.view(x.shape[0], 4, -1)


def test_onnx_dynamic_shapes_match_pytorch():
    import onnxruntime as ort

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 48, 3, padding=1), EMA(48), _Tail()).eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        model, torch.randn(1, 3, 16, 16), buffer, input_names=["x"], output_names=["y"], dynamo=False,
        dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "y": {0: "b", 2: "n"}}, opset_version=17,
    )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for shape in [(3, 3, 24, 40), (1, 3, 7, 5), (2, 3, 1, 1)]:
        x = torch.randn(shape)
        (y,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            assert torch.allclose(torch.from_numpy(y), model(x), atol=1e-4)
