"""Squeeze-and-Excitation channel attention (Hu et al., CVPR 2018, arXiv 1709.01507)."""

from __future__ import annotations

import torch
from torch import nn

from .graph_args import GraphArgsMeta
from .widths import reduced_width

__all__ = ("SE",)


class SE(nn.Module, metaclass=GraphArgsMeta):
    """Squeeze-and-Excitation: global average pool, bottleneck MLP (1x1 convs), sigmoid channel gate.

    Args:
        channels (int): Input channels C.
        reduction (int): Bottleneck ratio; the hidden width is max(8, C // reduction).

    Shape:
        Input (B, C, H, W) -> output (B, C, H, W).

    Example:
        >>> SE(64)(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = reduced_width(channels, reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def constant_gate_(self) -> float:
        """Make the gate a constant 0.5 (zero `fc2`), so the layer computes `0.5 * x`; in place.

        The function-preserving start of a layer inserted into a pretrained network (`ema_yolo.integration.start`).
        `fc2` gets gradients from the first step; `fc1` once `fc2` has moved.

        Returns:
            (float): The constant gate, 0.5.
        """
        with torch.no_grad():
            self.fc2.weight.zero_()
            self.fc2.bias.zero_()
        return 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate the channels of `x`."""
        return x * self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))).sigmoid()
