"""Wall-clock timing of a callable, shared by the benchmarks (`ema_yolo.bench`) and `ema-yolo compare`'s latency."""

import time

import torch

__all__ = ("time_calls",)


def time_calls(fn, device, repeats, warmup=1):
    """Return the per-call seconds of `fn` over `repeats` calls, after `warmup` calls (CUDA work is synchronised).

    Args:
        fn (callable): What to time; called without arguments.
        device (str | torch.device): Device `fn` runs on; on CUDA each call is bracketed by a synchronisation.
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
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return samples
