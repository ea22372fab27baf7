"""Which implementation `EMA` runs on a device: its operator, or the published structure where that measures faster.

The rule: on a device type in `MEASURED` the implementation measured there is used (CPU: the operator, 2.2-10.6x faster
than the published structure forward+backward and 1.8-6.8x forward at every YOLOv8 n/s neck map; `ema-yolo bench
module`, docs/benchmarks.md). On any other accelerator (CUDA, XPU, MPS: nothing was measured here) the first call for
each (device, dtype, shape, memory format, autocast, groups, with or without backward) times both and runs the faster
from then on. Both compute the same function in float32 or wider (the float64 parity tests), so the choice changes
speed, not results beyond rounding. The operator is kept without timing under `torch.use_deterministic_algorithms(True)`
(the published structure's adaptive pools have no deterministic CUDA backward), on the meta device (shape inference),
and when the timing fails (out of memory, an input inside a `torch.func` transform).
"""

import logging
import statistics
import threading

import torch

from ..timing import time_calls

__all__ = ("MEASURED", "choose_path")

LOGGER = logging.getLogger("ema_yolo")
MEASURED = {"cpu": "operator", "meta": "operator"}  # meta: shape inference, nothing runs to be timed
_PATHS = ("operator", "published")
_chosen = {}  # key (see choose_path) -> "operator" | "published"


def _cost(fn, x, params, backward, device, repeats=3):
    """Median seconds of `fn(x)`, with the backward to `x` and `params` when `backward` (no `.grad` is written)."""

    def call():
        out = fn(x)
        if backward:
            torch.autograd.grad(out.float().sum(), [x, *params], allow_unused=True)

    return statistics.median(time_calls(call, device, repeats))


def _measure(module, x, backward):
    """Seconds per call of each path for `x`'s shape, or None when the timing fails.

    Timed in a worker thread: grad mode, autograd's saved-tensor hooks (activation checkpointing) and the caller's
    autograd graph are per thread, so the timing neither runs under the caller's hooks nor adds to its graph; the
    caller's autocast state (also per thread) is set again there.
    """
    device, params = x.device, [p for p in module.parameters() if p.requires_grad]
    amp = torch.is_autocast_enabled(device.type)
    amp_dtype = torch.get_autocast_dtype(device.type) if amp else None
    costs = {}

    def work():
        try:
            probe = x.detach().clone().requires_grad_(backward)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                costs.update({p: _cost(getattr(module, f"_{p}"), probe, params, backward, device) for p in _PATHS})
        except Exception as e:  # noqa: BLE001 - timing is an optimisation: any failure keeps the operator
            LOGGER.debug(f"EMA path timing failed ({type(e).__name__}: {e}); using the operator")
            costs.clear()

    thread = threading.Thread(target=work, name="ema-path-timing")
    thread.start()
    thread.join()
    return costs or None


def choose_path(module, x):
    """Return "operator" or "published": the implementation `module` (an `EMA`) runs for input `x` (B, C, H, W).

    Args:
        module (EMA): The layer; its `_operator` and `_published` methods are the two implementations.
        x (torch.Tensor): The input about to be processed.

    Returns:
        (str): "operator" or "published", by the rule in this module's docstring; timed choices are logged once each.
    """
    device = x.device
    if device.type in MEASURED:
        return MEASURED[device.type]
    if torch.are_deterministic_algorithms_enabled():
        return "operator"
    backward = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))
    amp = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    key = (str(device), x.dtype, tuple(x.shape), channels_last, amp, module.groups, backward)
    if key not in _chosen:
        costs = _measure(module, x, backward)
        _chosen[key] = min(costs, key=costs.get) if costs else "operator"
        if costs:
            LOGGER.info(
                f"EMA on {device} {str(x.dtype).replace('torch.', '')} {tuple(x.shape)}"
                f"{f' autocast {amp}' if amp else ''}{' with backward' if backward else ''}: operator "
                f"{costs['operator'] * 1e3:.2f} ms, published structure {costs['published'] * 1e3:.2f} ms -> "
                f"{_chosen[key]}"
            )
    return _chosen[key]
