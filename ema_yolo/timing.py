"""Wall-clock timing of a callable, shared by the benchmarks (`ema_yolo.bench`) and `ema-yolo compare`'s latency."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

__all__ = ("time_calls",)


def time_calls(fn: Callable[[], object], device: str | torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Return the per-call seconds of `fn` over `repeats` calls, after `warmup` calls (accelerators synchronised).

    Args:
        fn (callable): What to time; called without arguments.
        device (str | torch.device): Device `fn` runs on; on an accelerator (CUDA, XPU, MPS) each call is bracketed
            by a synchronisation of that device.
        repeats (int): Timed calls.
        warmup (int): Untimed calls first.

    Returns:
        (list[float]): Seconds of each timed call.

    Example:
        >>> len(time_calls(lambda: torch.ones(4).sum(), "cpu", repeats=3))
        3
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        samples.append(time.perf_counter() - start)
    return samples


def _synchronize(device):
    """Wait for the work queued on `device` (an accelerator runs asynchronously; the CPU does not)."""
    if device.type not in ("cpu", "meta"):
        torch.accelerator.synchronize(device)
