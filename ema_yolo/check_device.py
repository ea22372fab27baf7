"""`ema-yolo check-device`: one report that EMA on a device is correct, deterministic when asked, compiles, and what
it costs, measured in one process.

Sections (each a table on stdout, all of them in the JSON with `--json FILE`):

- versions: Python, torch, Triton, CUDA, Ultralytics, the device's name;
- correctness: `EMA` (the implementation the path rule picks, and on CUDA also the Triton operator) against the
  published module (`EMAReference`) in float64 on the same input, forward and every gradient (input and six
  parameters), at the YOLOv8s neck maps at 640 px, batch 16: float32, float16 and bfloat16 autocast (the input in
  the autocast dtype, as the layer before hands it over), and float32 channels_last. The error is the largest absolute
  difference divided by the largest absolute reference value, per tensor, against the stated tolerance `TOLERANCES`.
  float32 means float32 here: TF32 convolutions and matrix products (cuDNN's default on CUDA) are off for this section
  and for compile, and back as the user had them for the timings;
- determinism: under `torch.use_deterministic_algorithms(True)` two forward+backward passes of EMA give bit-identical
  gradients; the published structure's behaviour there is reported (on CUDA its adaptive pools have no deterministic
  backward: an error);
- path: the path rule's decision per shape (`ema_path.choose_path`) and the timings of every candidate on the device,
  forward+backward;
- compile: `torch.compile` (inductor) of yolov8n-ema forward+backward against eager (outputs and every parameter
  gradient), and the number of graph breaks (`torch._dynamo.explain`); stock yolov8n beside it, the same way and
  not graded (`pass` None), shows what the compiler and the device give without EMA;
- step: a training step (forward in training mode and backward; AMP on accelerators) of yolov8s, yolov8s-ema,
  yolov8s-ema with the published module and yolov8s-c2f-ema, timed interleaved: milliseconds per step, the bytes
  autograd saves for the backward (every device) and the allocator's peak (CUDA), and their ratios to yolov8s.

`--quick` runs the same sections smaller (batch 2 and 1/4 of the maps, fewer repeats, compile of one EMA module
instead of the whole model, the step at 128 px): under 3 minutes on a 2-core CPU.
"""

import contextlib
import platform
import statistics
import sys
import time

import torch

from .bench import NECK_MAPS, with_reference_ema
from .timing import time_calls

__all__ = ("SECTIONS", "TOLERANCES", "check_device")

SECTIONS = ("versions", "correctness", "determinism", "path", "compile", "step")

# Largest |EMA - published| / largest |published|, per tensor: (forward, gradients). float32: rounding of ~60
# operations in another order; autocast: EMA computes in float32 and returns the input's dtype, so the output carries
# that dtype's rounding (float16 2^-11, bfloat16 2^-8) and the gradients the rounding of the incoming gradient.
TOLERANCES = {
    "float32": (1e-4, 1e-3),
    "float32 channels_last": (1e-4, 1e-3),
    "float16 autocast": (2e-3, 1e-2),
    "bfloat16 autocast": (1.6e-2, 6e-2),
}


def _progress(message):
    print(f"check-device: {message}", file=sys.stderr, flush=True)


def _shapes(quick):
    """The YOLOv8s neck maps at 640 px, batch 16; quick: batch 2 and a quarter of each side."""
    return [(2, c, h // 4, w // 4) if quick else (16, c, h, w) for c, h, w in NECK_MAPS["yolov8s"]]


def versions(device):
    """Versions of what EMA runs on: Python, torch, Triton, CUDA, Ultralytics, and the device's name."""
    import ultralytics

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "device": str(device), "name": name, "python": platform.python_version(), "torch": torch.__version__,
        "triton": triton_version, "cuda": torch.version.cuda, "ultralytics": ultralytics.__version__,
        "threads": torch.get_num_threads(),
    }


def _modules(channels, device):
    """A published module with random (non-default) weights and an `EMA` loaded from it, on `device`."""
    from .nn import EMA, EMAReference, ema_groups

    torch.manual_seed(0)
    ref = EMAReference(channels, ema_groups(channels))
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    fast = EMA(channels)
    fast.load_state_dict(ref.state_dict())
    return ref.to(device), fast.to(device)


def _float64_device(device):
    """Where the float64 reference runs: the device, or the CPU where it has no float64 (MPS)."""
    return torch.device("cpu") if device.type == "mps" else device


def _relative_errors(outputs, references):
    return [((a.double() - b.double().to(a.device)).abs().max() / b.abs().max().clamp_min(1e-30)).item()
            for a, b in zip(outputs, references)]


def correctness(device, shapes):
    """Rows per (shape, mode, implementation): forward and worst gradient errors against the published module in
    float64, and whether they are within `TOLERANCES`."""
    from .nn.ema_path import path_function
    from .nn.ema_triton import available

    rows = []
    for shape in shapes:
        ref, fast = _modules(shape[1], device)
        ref64 = ref.to(_float64_device(device), torch.float64)
        x = torch.randn(shape, device=device)
        go = torch.randn(shape, device=device)
        for mode, (tol_fwd, tol_grad) in TOLERANCES.items():
            dtype = {"float16 autocast": torch.float16, "bfloat16 autocast": torch.bfloat16}.get(mode, torch.float32)
            xin = x.to(dtype)
            if mode.endswith("channels_last"):
                xin = xin.contiguous(memory_format=torch.channels_last)
            x64 = xin.detach().to(ref64.conv1x1.weight.device, torch.float64).requires_grad_()
            y64 = ref64(x64)
            grads64 = torch.autograd.grad(y64, [x64, *ref64.parameters()], go.to(x64))
            impls = {"EMA": fast}
            if available(device):
                impls["Triton operator"] = path_function(fast, "triton")
            for impl, fn in impls.items():
                probe = xin.detach().requires_grad_()
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    y = fn(probe)
                grads = torch.autograd.grad(y, [probe, *fast.parameters()], go.to(y.dtype))
                fwd, *grad_errors = _relative_errors([y, *grads], [y64, *grads64])
                rows.append({
                    "shape": list(shape), "mode": mode, "implementation": impl, "output dtype": str(y.dtype)[6:],
                    "forward error": float(f"{fwd:.2e}"), "worst gradient error": float(f"{max(grad_errors):.2e}"),
                    "tolerance": f"{tol_fwd:g} / {tol_grad:g}",
                    "pass": y.dtype == xin.dtype and fwd <= tol_fwd and max(grad_errors) <= tol_grad,
                })
        _progress(f"correctness {tuple(shape)} done")
    return rows


def _grads_twice(module, x):
    """The input's and the parameters' gradients of two forward+backward passes."""
    runs = []
    for _ in range(2):
        probe = x.detach().requires_grad_()
        out = module(probe)
        runs.append(torch.autograd.grad(out.square().sum(), [probe, *module.parameters()]))
    return runs


def determinism(device, shapes):
    """Under deterministic algorithms: are EMA's gradients bit-identical over two passes; what the published does."""
    rows = []
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for shape in shapes:
            ref, fast = _modules(shape[1], device)
            x = torch.randn(shape, device=device)
            row = {"shape": list(shape)}
            for name, module in (("EMA", fast), ("published", ref)):
                try:
                    first, second = _grads_twice(module, x)
                    row[name] = "bit-identical" if all(torch.equal(a, b) for a, b in zip(first, second)) else "differs"
                except RuntimeError as e:  # e.g. CUDA adaptive pooling: no deterministic backward
                    row[name] = f"error: {str(e).splitlines()[0][:120]}"
            row["pass"] = row["EMA"] == "bit-identical"
            rows.append(row)
    finally:
        torch.use_deterministic_algorithms(previous)
    return rows


def path(device, shapes):
    """The path rule's decision per shape, forward+backward, with every candidate's time on the device."""
    from .nn import ema_path

    rows = []
    for shape in shapes:
        _, fast = _modules(shape[1], device)
        x = torch.randn(shape, device=device, requires_grad=True)
        decision = ema_path.choose_path(fast, x)
        costs = ema_path.path_costs(fast, x, True, ema_path.candidates(device))
        rows.append({
            "shape": list(shape), "decision": decision, "fastest measured": min(costs, key=costs.get),
            **{f"{ema_path.LABELS[name]} ms": round(cost * 1e3, 3) for name, cost in costs.items()},
        })
    return rows


def _forward_backward(model, x):
    """Outputs and the parameter gradients of the summed squares of every output tensor."""
    from .bench import _training_step

    model.zero_grad(set_to_none=True)
    outputs = _training_step(model, x)
    return outputs, [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def _compile_row(what, model, x, graded=True):
    """torch.compile (inductor) of `model` against eager on `x`, forward+backward: graphs, breaks, worst error; a
    row that is not `graded` (the yardstick) has `pass` None."""
    import torch._dynamo

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    eager_out, eager_grads = _forward_backward(model, x)
    start = time.perf_counter()
    out, grads = _forward_backward(torch.compile(model), x)
    seconds = time.perf_counter() - start
    errors = _relative_errors([*out, *grads], [*eager_out, *eager_grads])
    return {
        "model": what, "input": list(x.shape), "graphs": explanation.graph_count,
        "graph breaks": explanation.graph_break_count, "worst relative error": float(f"{max(errors):.2e}"),
        "tolerance": 1e-3, "compile+run s": round(seconds, 1),
        "pass": explanation.graph_break_count == 0 and max(errors) <= 1e-3 if graded else None,
    }


def compile_check(device, quick):
    """torch.compile (inductor) against eager, forward+backward, in IEEE float32: yolov8n-ema, and stock yolov8n as
    the yardstick of what the compiler and the device alone give (quick: one EMA module)."""
    from .nn import EMA

    torch.manual_seed(0)
    if quick:
        return [_compile_row("EMA(64)", EMA(64).to(device), torch.randn(2, 64, 20, 20, device=device))]
    from ultralytics.nn.tasks import DetectionModel

    from . import register

    register()
    x = torch.randn(2, 3, 640, 640, device=device)
    rows = []
    for name in ("yolov8n", "yolov8n-ema"):  # the stock model is reported, not graded: EMA's check is its own row
        torch.manual_seed(0)
        model = DetectionModel(f"{name}.yaml", verbose=False).to(device).train()
        rows.append(_compile_row(name, model, x, graded=name != "yolov8n"))
    return rows


def _tf32_switches():
    """(object, attribute, the value for IEEE float32) of what chooses TF32 for float32 convolutions and matrix
    products: the `fp32_precision` settings where torch has them (2.9 on), else the older `allow_tf32` flags (setting
    the old ones where the new exist mixes the two APIs, after which `torch.get_float32_matmul_precision()` raises)."""
    if hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"):
        return [(torch.backends.cudnn.conv, "fp32_precision", "ieee"), (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
    return [(torch.backends.cudnn, "allow_tf32", False), (torch.backends.cuda.matmul, "allow_tf32", False)]


@contextlib.contextmanager
def _ieee_float32():
    """Float32 convolutions and matrix products in float32 on CUDA, the user's settings restored afterwards.

    cuDNN convolutions default to TF32 there (a 10-bit mantissa: float16's rounding), which the float32 tolerances do
    not allow for: on an H200 (torch 2.11, 2026-12-04), where the path rule ran the published structure, its
    convolutions gave float32 forward errors of 3.2e-4 and 3.9e-4 against 1e-4 with TF32 on.
    """
    switches = _tf32_switches()
    saved = [getattr(obj, name) for obj, name, _ in switches]
    for obj, name, value in switches:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for (obj, name, _), value in zip(switches, saved):
            setattr(obj, name, value)


class _SavedBytes:
    """Bytes of the distinct storages autograd saves for the backward while active (activation memory)."""

    def __init__(self):
        self.storages = {}

    def pack(self, t):
        storage = t.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return t

    @property
    def total(self):
        return sum(self.storages.values())


def step(device, quick, repeats, rounds):
    """Training steps of yolov8s, yolov8s-ema, yolov8s-ema with the published module and yolov8s-c2f-ema."""
    from ultralytics.nn.tasks import DetectionModel

    from . import register
    from .bench import _training_step

    register()
    imgsz, batch = (128, 2) if quick else (640, 8 if device.type != "cpu" else 2)
    torch.manual_seed(0)
    models = {
        "yolov8s": DetectionModel("yolov8s.yaml", verbose=False),
        "yolov8s-ema": DetectionModel("yolov8s-ema.yaml", verbose=False),
    }
    models["yolov8s-ema, published module"] = with_reference_ema(models["yolov8s-ema"])
    models["yolov8s-c2f-ema"] = DetectionModel("yolov8s-c2f-ema.yaml", verbose=False)
    x = torch.randn(batch, 3, imgsz, imgsz, device=device)
    amp = device.type != "cpu"

    def run(model):
        with torch.autocast(device.type, enabled=amp):
            _training_step(model, x)

    times, saved, peak = {}, {}, {}
    for name, model in models.items():
        model.to(device).train()
        counter = _SavedBytes()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
            run(model)  # also the warm-up step before the timed ones
        saved[name] = counter.total
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peak[name] = torch.cuda.max_memory_allocated(device)
        model.zero_grad(set_to_none=True)
    for _ in range(rounds):
        for name, model in models.items():
            times.setdefault(name, []).extend(time_calls(lambda m=model: run(m), device, repeats, warmup=0))
            model.zero_grad(set_to_none=True)
    ms = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    rows = []
    for name in models:
        row = {"model": name, "input": [batch, 3, imgsz, imgsz], "amp": amp, "ms/step": round(ms[name], 1),
               "time ratio": round(ms[name] / ms["yolov8s"], 3), "saved MB": round(saved[name] / 2**20, 1),
               "saved ratio": round(saved[name] / saved["yolov8s"], 3)}
        if peak:
            row |= {"peak MB": round(peak[name] / 2**20, 1), "peak ratio": round(peak[name] / peak["yolov8s"], 3)}
        rows.append(row)
    return rows


def check_device(device, quick=False, sections=SECTIONS):
    """Run the requested sections on `device`; return {section: rows} (versions: one dict)."""
    shapes = _shapes(quick)
    report = {}
    for section in sections:
        _progress(f"{device}: {section}")
        start = time.perf_counter()
        if section == "versions":
            report[section] = versions(device)
        elif section == "correctness":
            with _ieee_float32():
                report[section] = correctness(device, shapes)
        elif section == "determinism":
            report[section] = determinism(device, shapes[-1:] if quick else shapes)
        elif section == "path":
            report[section] = path(device, shapes)
        elif section == "compile":
            with _ieee_float32():
                report[section] = compile_check(device, quick)
        elif section == "step":
            report[section] = step(device, quick, repeats=1 if quick else 3, rounds=3)
        _progress(f"{device}: {section} took {time.perf_counter() - start:.1f} s")
    return report
