"""Which implementation `EMA` runs on a device: its operator, its Triton operator, or the published structure,
whichever measures fastest.

The rule: on a device type in `MEASURED` the implementation measured there is used (CPU: the operator, faster than
the published structure at every YOLOv8 n/s neck map, forward+backward and, since issue #25, inference at batch 1 to 8;
`ema-yolo bench module`, docs/benchmarks.md). On any other accelerator (CUDA, XPU, MPS: nothing was measured here)
the first call for each (device, dtype, shape, memory format, autocast, groups, with or without backward,
deterministic or not) times the candidates and runs the fastest from then on: the operator, the published structure,
and where Triton runs (CUDA) the Triton operator (`ema_triton`). Not the published structure under `torch.compile`:
compiling it per layer and shape made the first training step of yolov8s-ema on an H200 take 33 s and ran into
dynamo's recompile limit (2026-12-04); `torch.compile` of the whole model (`compile=True`) is the user's choice.
All compute the same function in float32 or wider (the float64 parity tests), so the choice changes speed, not
results beyond rounding.
Under `torch.use_deterministic_algorithms(True)` only the deterministic candidates are timed: the operator and the
Triton operator (the published structure's adaptive pools have no deterministic CUDA backward). Under `torch.compile`
nothing can be timed: on CUDA with Triton it takes the Triton operator, whose kernels inductor sees, elsewhere the
operator (one opaque node, no graph breaks). Without timing it also keeps the operator on the meta device (shape
inference) and when every timing fails (out of memory, an input inside a `torch.func` transform); a candidate whose
timing fails (a Triton compile error) is left out.
"""

import logging
import statistics
import threading
import weakref

import torch

from ..timing import time_calls

__all__ = ("MEASURED", "choose_path", "path_costs", "path_function")

LOGGER = logging.getLogger("ema_yolo")
MEASURED = {"cpu": "operator", "meta": "operator"}  # meta: shape inference, nothing runs to be timed
DETERMINISTIC = ("operator", "triton")  # no atomics in either's backward
LABELS = {
    "operator": "operator",
    "published": "published structure",
    "triton": "Triton operator",
}
_chosen = weakref.WeakKeyDictionary()  # layer -> {key (see choose_path): a name in LABELS}; lives as long as the layer


def _triton_available(device):
    from .ema_triton import available

    return available(device)


def candidates(device):
    """The implementations `choose_path` times on `device`, in the order it times them."""
    names = ["operator", "published"]
    if _triton_available(device):
        names.append("triton")
    if torch.are_deterministic_algorithms_enabled():
        names = [n for n in names if n in DETERMINISTIC]
    return names


def path_function(module, name):
    """The callable x -> EMA(x) of implementation `name` (a key of `LABELS`) for `module` (an `EMA`)."""
    if name == "triton":
        from .ema_triton import ema_triton

        return lambda x: ema_triton(x, module.groups, module.gn.eps, *module._params())
    return getattr(module, f"_{name}")


def _cost(fn, x, params, backward, device, repeats=3):
    """Median seconds of `fn(x)`, with the backward to `x` and `params` when `backward` (no `.grad` is written)."""

    def call():
        out = fn(x)
        if backward:
            torch.autograd.grad(out.float().sum(), [x, *params], allow_unused=True)

    return statistics.median(time_calls(call, device, repeats))


def path_costs(module, x, backward, names):
    """Seconds per call of each implementation in `names` for `x`'s shape; those whose timing failed are left out.

    Timed in a worker thread: grad mode, autograd's saved-tensor hooks (activation checkpointing) and the caller's
    autograd graph are per thread, so the timing neither runs under the caller's hooks nor adds to its graph; the
    caller's autocast state (also per thread) is set again there.
    """
    device, params = x.device, [p for p in module.parameters() if p.requires_grad]
    amp = torch.is_autocast_enabled(device.type)
    amp_dtype = torch.get_autocast_dtype(device.type) if amp else None
    costs = {}

    def work():
        probe = x.detach().clone().requires_grad_(backward)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            for name in names:
                try:
                    costs[name] = _cost(path_function(module, name), probe, params, backward, device)
                except Exception as e:  # noqa: BLE001 - timing is an optimisation: a failing candidate is left out
                    LOGGER.debug(f"EMA path timing of the {LABELS[name]} failed ({type(e).__name__}: {e})")

    thread = threading.Thread(target=work, name="ema-path-timing")
    thread.start()
    thread.join()
    return costs


def choose_path(module, x):
    """Return the name of the implementation `module` (an `EMA`) runs for input `x` (B, C, H, W).

    Args:
        module (EMA): The layer; `path_function(module, name)` is each implementation.
        x (torch.Tensor): The input about to be processed.

    Returns:
        (str): A key of `LABELS`, by the rule in this module's docstring; timed choices are logged once each.
    """
    device = x.device
    if torch.compiler.is_compiling():
        return "triton" if _triton_available(device) else "operator"
    if device.type in MEASURED:
        return MEASURED[device.type]
    names = candidates(device)
    if len(names) == 1:
        return names[0]
    backward = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))
    amp = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    key = (str(device), x.dtype, tuple(x.shape), channels_last, amp, module.groups, backward, tuple(names))
    chosen = _chosen.setdefault(module, {})
    if key not in chosen:
        costs = path_costs(module, x, backward, names)
        chosen[key] = min(costs, key=costs.get) if costs else "operator"
        if costs:
            LOGGER.info(
                f"EMA on {device} {str(x.dtype).replace('torch.', '')} {tuple(x.shape)}"
                f"{f' autocast {amp}' if amp else ''}{' with backward' if backward else ''}: "
                + ", ".join(f"{LABELS[name]} {cost * 1e3:.2f} ms" for name, cost in costs.items())
                + f" -> {chosen[key]}"
            )
    return chosen[key]
