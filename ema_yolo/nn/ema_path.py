"""Which implementation `EMA` runs on a device: its operator, or the published structure where that measures faster.

The rule: on a device type in `MEASURED` the implementation measured there is used (CPU: the operator, 2-7.5x faster
than the published structure at every YOLOv8 n/s neck map, forward and forward+backward; `ema-yolo bench module`,
docs/benchmarks.md). Anywhere else (CUDA, MPS, XPU, where nothing was measured here), the first call for each
(device, dtype, shape, with or without backward) times both, and the faster one runs from then on; both compute the
same function (the float64 parity tests), so the choice changes speed, not results beyond rounding. With
`torch.use_deterministic_algorithms(True)` the operator is used without timing: the published structure's adaptive
pools have no deterministic CUDA backward.
"""

import logging
import statistics

import torch

from ..timing import time_calls

__all__ = ("MEASURED", "choose_path")

LOGGER = logging.getLogger("ema_yolo")
MEASURED = {"cpu": "operator"}
_PATHS = ("operator", "published")
_chosen = {}  # (device, dtype, shape, backward) -> "operator" | "published"


def _cost(fn, x, params, backward, device, repeats=3):
    """Median seconds of `fn(x)`, with the backward to `x` and `params` when `backward` (no `.grad` is written)."""

    def call():
        out = fn(x)
        if backward:
            torch.autograd.grad(out.float().sum(), [x, *params], allow_unused=True)

    return statistics.median(time_calls(call, device, repeats))


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
    params = [p for p in module.parameters() if p.requires_grad]
    backward = torch.is_grad_enabled() and (x.requires_grad or bool(params))
    key = (str(device), x.dtype, tuple(x.shape), backward)
    if key not in _chosen:
        probe = x.detach().requires_grad_(backward)
        costs = {name: _cost(getattr(module, f"_{name}"), probe, params, backward, device) for name in _PATHS}
        _chosen[key] = min(costs, key=costs.get)
        LOGGER.info(
            f"EMA on {device} {str(x.dtype).replace('torch.', '')} {tuple(x.shape)}"
            f"{' with backward' if backward else ''}: operator {costs['operator'] * 1e3:.2f} ms, published structure "
            f"{costs['published'] * 1e3:.2f} ms -> {_chosen[key]}"
        )
    return _chosen[key]
