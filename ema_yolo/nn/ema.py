"""Efficient Multi-Scale Attention (EMA), computed without the published module's expensive operators.

Ouyang et al., "Efficient Multi-Scale Attention Module with Cross-Spatial Learning", ICASSP 2023, arXiv 2305.13563.
"""

import warnings

import torch
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from .ema_export import ema_export_forward, export_weights
from .ema_function import autocast_off, ema, ema_forward
from .ema_path import choose_path, path_function
from .ema_reference import published_ema
from .graph_args import GraphArgsMeta

__all__ = ("EMA", "ema_groups")

_EXPORT_PREFIX = "export_"  # buffer names of the export weights


def ema_groups(channels: int, factor: int = 32) -> int:
    """Return the number of channel groups EMA uses: the largest divisor of `channels` that is <= `factor`.

    Args:
        channels (int): Input channels.
        factor (int): Requested number of groups (the published default is 32).

    Returns:
        (int): `factor` when it divides `channels`, else the largest divisor of `channels` below it.

    Example:
        >>> ema_groups(256), ema_groups(48), ema_groups(16), ema_groups(20, 8)
        (32, 24, 16, 5)
    """
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise TypeError(f"EMA needs a positive int channel count, got {channels!r}")
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"EMA factor must be a positive int, got {factor!r}")
    return next(g for g in range(min(factor, channels), 0, -1) if channels % g == 0)


def _traced():
    """True while a graph is being traced or exported (`torch.jit.trace`, `torch.export`, ONNX)."""
    return torch.jit.is_tracing() or _exporting() or torch.onnx.is_in_onnx_export()


def _exporting():
    """True under `torch.export` (strict or not): the flag it sets, read as a plain global (False where a torch
    release has no such flag).

    Not `torch.compiler.is_exporting()`: dynamo traced that call as the constant True under `torch.compile` too (seen
    with torch 2.11, fixed upstream by pytorch/pytorch#176499, not in 2.11), which sent every compiled model down the
    exporters' path (an H200 run, 2026-12-04).
    """
    return getattr(torch.compiler, "_is_exporting_flag", False)


def _observed():
    """True outside torch.compile while a Python dispatch mode watches the ATen ops (a FLOP counter, a debug mode)."""
    return not torch.compiler.is_compiling() and is_in_torch_dispatch_mode()


class EMA(nn.Module, metaclass=GraphArgsMeta):
    """Efficient Multi-Scale Attention (Ouyang et al., ICASSP 2023, arXiv 2305.13563).

    Mathematically identical to the published module (`EMAReference`), forward and backward, with the same
    parameters (`gn`, `conv1x1`, `conv3x3`, shared by all groups), so a published state dict loads with
    `strict=True`. It is faster because it never builds what the output does not need, and it has a hand-derived
    backward; both run as functional `torch.library` operators (`ema_yolo::ema_<version>`), so `torch.compile` keeps
    EMA as one opaque node with no graph breaks, while exporters (`torch.jit.trace`, ONNX, `torch.export`) and FLOP
    counters (`torch.utils.flop_counter`) see plain ops.
    Where the savings come from:

    - the groups stay in the channel dimension; directional pooling is `sum`/`mean`, not adaptive pooling, so
      dynamic-shape ONNX export is correct and the CUDA backward is deterministic;
    - the spatial mean of a GroupNorm(cg, cg) output is exactly its bias, so the first softmax is `softmax(gn.bias)`;
    - the 3x3 branch only enters as (a) its spatial mean, computed from border sums of the input, and (b) a
      softmax-weighted sum over its output channels, which is one 3x3 kernel per input channel (shared by the
      groups) applied as nine batched channel mixes added shifted: no cg -> cg convolution is ever run;
    - the GroupNorm branch only enters as a softmax-weighted channel sum, one batched matmul over the centred
      product with the normalisation folded into its weights;
    - on CPU it runs in cache-sized chunks of group-samples, so the input is read from memory about once and the
      output written once, and the backward recomputes the gate product instead of keeping it.

    It computes in float32 (or float64 for float64 inputs) whatever the input dtype, as autocast does for GroupNorm
    and softmax, and returns the input's dtype.

    Device rule (`ema_path`): the operator on CPU, where it was measured faster; on other devices the first call per
    input shape times the operator, the published structure (`published_ema`) and, on CUDA, the Triton operator
    (`ema_triton`), and runs the fastest.

    Group rule: EMA uses G = `factor` groups when `factor` divides `channels`; otherwise (including `channels <
    factor`) it uses the largest divisor of `channels` that is <= `factor` and says so in a Python warning (shown once
    per message and call site). It never asserts.

    Args:
        channels (int): Input channels C.
        factor (int): Requested number of channel groups G (published default 32).

    Shape:
        Input (B, C, H, W) -> output (B, C, H, W), same dtype.

    Example:
        >>> m = EMA(48)  # 48 is not a multiple of 32: uses 24 groups of 2 channels
        >>> m(torch.randn(2, 48, 20, 20)).shape
        torch.Size([2, 48, 20, 20])
    """

    def __init__(self, channels: int, factor: int = 32):
        super().__init__()
        groups = ema_groups(channels, factor)
        if groups != factor:  # Python's warning registry shows each distinct message once per call site
            warnings.warn(f"EMA: {channels} channels are not a multiple of factor {factor}; using {groups} groups",
                          stacklevel=2)
        self.channels, self.groups, self.group_channels = channels, groups, channels // groups
        cg = self.group_channels
        self.gn = nn.GroupNorm(cg, cg)
        self.conv1x1 = nn.Conv2d(cg, cg, kernel_size=1)
        self.conv3x3 = nn.Conv2d(cg, cg, kernel_size=3, padding=1)
        self.register_load_state_dict_post_hook(EMA._refresh_export_weights)

    @property
    def export(self) -> bool:
        """True in Ultralytics exports (set on the exporter's copy, like `Detect.export`): the forward is
        `ema_export_forward`.

        Setting it True keeps a snapshot of the module's `export_weights` as buffers (left out of the state dict), which
        a traced or exported graph reads as constants; eager calls compute the same weights from the live parameters
        (so gradients flow) and refresh the snapshot, as does `load_state_dict`. Setting it False drops them.
        """
        return bool(self._export_weights())

    @export.setter
    def export(self, on: bool) -> None:
        for name in list(self._export_weights()):
            delattr(self, _EXPORT_PREFIX + name)
        if on:
            for name, t in export_weights(self.groups, self.gn, self.conv1x1, self.conv3x3).items():
                self.register_buffer(_EXPORT_PREFIX + name, t.detach().clone(), persistent=False)

    def _export_weights(self):
        n = len(_EXPORT_PREFIX)
        return {k[n:]: t for k, t in self._buffers.items() if k.startswith(_EXPORT_PREFIX)}

    def _refresh_export_weights(self, *_):
        """Copy the live parameters into the export snapshot, if there is one (also a `load_state_dict` post-hook)."""
        if self.export:
            self._store_export_weights(export_weights(self.groups, self.gn, self.conv1x1, self.conv3x3))

    def _store_export_weights(self, weights):
        with torch.no_grad():
            for name, t in self._export_weights().items():
                t.copy_(weights[name])

    def extra_repr(self) -> str:
        """Describe the grouping."""
        return f"channels={self.channels}, groups={self.groups}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply EMA to `x` of shape (B, C, H, W)."""
        if not torch.jit.is_tracing() and x.shape[1] != self.channels:
            raise ValueError(f"EMA was built for {self.channels} channels but got an input with {x.shape[1]}")
        if self.export:
            if _traced():
                weights = self._export_weights()  # constants in the graph
            else:
                weights = export_weights(self.groups, self.gn, self.conv1x1, self.conv3x3)
                self._store_export_weights(weights)
            return ema_export_forward(x, self.groups, self.group_channels, self.gn.eps, weights)
        if _traced() or _observed():
            return ema_forward(x, self.groups, self.gn.eps, *self._params())[0]  # exporters, op observers: plain ops
        return path_function(self, choose_path(self, x))(x)

    def _operator(self, x):
        return ema(x, self.groups, self.gn.eps, *self._params())

    def _published(self, x):
        # in float32 or wider, autocast off, like the operator: the two paths differ in speed only
        with autocast_off(x.device.type):
            acc = torch.promote_types(x.dtype, torch.float32)
            return published_ema(x.to(acc), self.groups, self.gn, self.conv1x1, self.conv3x3).to(x.dtype)

    def _params(self):
        gn, conv1x1, conv3x3 = self.gn, self.conv1x1, self.conv3x3
        return gn.weight, gn.bias, conv1x1.weight, conv1x1.bias, conv3x3.weight, conv3x3.bias

    def constant_gate_(self) -> float:
        """Make the gate a constant 0.5 everywhere, so the layer computes `0.5 * x`; in place.

        The function-preserving start of a layer inserted into a pretrained network (`ema_yolo.integration.start`),
        whose readers absorb the factor. The GroupNorm scale and shift and the 3x3 kernel and bias are zeroed: both
        branches are then 0 at every pixel, every softmax is uniform and the pre-sigmoid weights are 0, where the
        sigmoid is steepest (slope 0.25). The GroupNorm scale and shift and the 3x3 convolution get gradients from the
        first step; the 1x1 convolution, which only acts through the GroupNorm scale, gets them once that has moved.

        Returns:
            (float): The constant gate, 0.5 (`forward(x) == 0.5 * x`).
        """
        with torch.no_grad():
            for t in (self.gn.weight, self.gn.bias, self.conv3x3.weight, self.conv3x3.bias):
                t.zero_()
        self._refresh_export_weights()
        return 0.5

    def spatial_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Return the per-pixel sigmoid weights EMA multiplies each channel group of `x` by (the paper's Fig. 1 output).

        Args:
            x (torch.Tensor): Input (B, C, H, W).

        Returns:
            (torch.Tensor): Weights in (0, 1), shape (B, G, H, W), float32 or wider; `forward(x)` equals
                `x * weights` with each group's weights repeated over its C / G channels.

        Example:
            >>> EMA(64, factor=16).spatial_weights(torch.randn(2, 64, 8, 8)).shape
            torch.Size([2, 16, 8, 8])
        """
        with torch.no_grad():
            _, (_, _, sig, *_) = ema_forward(x, self.groups, self.gn.eps, *self._params())  # sig: (B * G, H, W)
        return sig.view(x.shape[0], self.groups, *x.shape[2:])
