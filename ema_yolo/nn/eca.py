"""Efficient Channel Attention (Wang et al., CVPR 2020, "ECA-Net", arXiv 1910.03151)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .graph_args import GraphArgsMeta

__all__ = ("ECA", "eca_kernel_size")


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """The paper's adaptive kernel size (Eq. 12): `|log2(C) / gamma + b / gamma|` rounded to the nearest odd below.

    Args:
        channels (int): Input channels C.
        gamma, b (float): The mapping's constants (2 and 1 in the paper).

    Returns:
        (int): An odd kernel size >= 1; the paper's code (`eca_resnet.py`) computes `t = int(abs((log2(C) + b) /
            gamma))` and takes `t` if odd, else `t + 1`.

    Example:
        >>> eca_kernel_size(64), eca_kernel_size(256), eca_kernel_size(512)
        (3, 5, 5)
    """
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class ECA(nn.Module, metaclass=GraphArgsMeta):
    """ECA: global average pool, a 1-D convolution of kernel size k across the channels (no bias, no reduction),
    sigmoid channel gate. k follows the channel count (`eca_kernel_size`) unless given.

    Args:
        channels (int): Input channels C.
        kernel_size (int, optional): The 1-D kernel size k (odd); default: the paper's adaptive size.

    Shape:
        Input (B, C, H, W) -> output (B, C, H, W).

    Example:
        >>> ECA(64)(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    def __init__(self, channels: int, kernel_size: int | None = None):
        super().__init__()
        k = kernel_size or eca_kernel_size(channels)
        if k % 2 == 0:
            raise ValueError(f"ECA kernel size must be odd, got {k}")
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def constant_gate_(self) -> float:
        """Make the gate a constant 0.5 (zero `conv`), so the layer computes `0.5 * x`; in place.

        The function-preserving start of a layer inserted into a pretrained network (`ema_yolo.integration.start`).
        `conv` gets gradients from the first step.

        Returns:
            (float): The constant gate, 0.5.
        """
        with torch.no_grad():
            self.conv.weight.zero_()
        return 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate the channels of `x`."""
        y = self.conv(x.mean((2, 3))[:, None])  # (B, 1, C): the 1-D convolution runs across channels
        return x * y.sigmoid()[:, 0, :, None, None]
