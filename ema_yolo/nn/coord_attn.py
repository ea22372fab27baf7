"""Coordinate Attention (Hou et al., CVPR 2021, arXiv 2103.02907)."""

from __future__ import annotations

import torch
from torch import nn

from .graph_args import GraphArgsMeta
from .widths import reduced_width

__all__ = ("CA",)


class CA(nn.Module, metaclass=GraphArgsMeta):
    """Coordinate Attention: pool along each spatial direction, a shared 1x1 conv + BN + h-swish on both, then two
    1x1 convs give a height gate and a width gate. Pools are `mean`, so dynamic-shape ONNX export stays correct.

    Args:
        channels (int): Input channels C.
        reduction (int): Bottleneck ratio; the hidden width is max(8, C // reduction).

    Shape:
        Input (B, C, H, W) -> output (B, C, H, W).

    Example:
        >>> CA(64)(torch.randn(2, 64, 8, 6)).shape
        torch.Size([2, 64, 8, 6])
    """

    def __init__(self, channels: int, reduction: int = 32):
        super().__init__()
        hidden = reduced_width(channels, reduction)
        self.conv1 = nn.Conv2d(channels, hidden, 1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(hidden, channels, 1)
        self.conv_w = nn.Conv2d(hidden, channels, 1)

    def constant_gate_(self) -> float:
        """Make both gates a constant 0.5 (zero `conv_h` and `conv_w`), so the layer computes `0.25 * x`; in place.

        The function-preserving start of a layer inserted into a pretrained network (`ema_yolo.integration.start`).
        `conv_h` and `conv_w` get gradients from the first step; `conv1` and `bn1` once those have moved.

        Returns:
            (float): The constant gain, 0.25.
        """
        with torch.no_grad():
            for conv in (self.conv_h, self.conv_w):
                conv.weight.zero_()
                conv.bias.zero_()
        return 0.25

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate `x` by its row and column attention maps."""
        h = x.shape[2]
        pooled = torch.cat((x.mean(3, keepdim=True), x.mean(2, keepdim=True).transpose(2, 3)), 2)  # (B, C, H+W, 1)
        y = self.act(self.bn1(self.conv1(pooled)))
        y_h, y_w = y[:, :, :h], y[:, :, h:].transpose(2, 3)
        return x * self.conv_h(y_h).sigmoid() * self.conv_w(y_w).sigmoid()
