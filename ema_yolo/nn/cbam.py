"""Convolutional Block Attention Module (Woo et al., ECCV 2018, arXiv 1807.06521)."""

from __future__ import annotations

import torch
from torch import nn

from .graph_args import GraphArgsMeta
from .widths import reduced_width

__all__ = ("CBAM",)


class CBAM(nn.Module, metaclass=GraphArgsMeta):
    """CBAM: channel attention (shared MLP over average- and max-pooled features), then spatial attention (a KxK conv
    over the channel-wise mean and max maps).

    Args:
        channels (int): Input channels C.
        reduction (int): MLP bottleneck ratio; the hidden width is max(8, C // reduction).
        kernel_size (int): Spatial attention kernel size (7 in the paper).

    Shape:
        Input (B, C, H, W) -> output (B, C, H, W).

    Example:
        >>> CBAM(64)(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        hidden = reduced_width(channels, reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def constant_gate_(self) -> float:
        """Make both gates a constant 0.5 (zero `fc2` and `spatial`), so the layer computes `0.25 * x`; in place.

        The function-preserving start of a layer inserted into a pretrained network (`ema_yolo.integration.start`).
        `fc2` and `spatial` get gradients from the first step; `fc1` once `fc2` has moved.

        Returns:
            (float): The constant gain, 0.25.
        """
        with torch.no_grad():
            self.fc2.weight.zero_()
            self.spatial.weight.zero_()
        return 0.25

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate the channels, then the positions, of `x`."""
        avg, mx = x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
        x = x * (self.fc2(self.act(self.fc1(avg))) + self.fc2(self.act(self.fc1(mx)))).sigmoid()
        maps = torch.cat((x.mean(1, keepdim=True), x.amax(1, keepdim=True)), 1)
        return x * self.spatial(maps).sigmoid()
