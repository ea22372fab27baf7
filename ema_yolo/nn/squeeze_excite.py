"""Squeeze-and-Excitation channel attention (Hu et al., CVPR 2018, arXiv 1709.01507)."""

from torch import nn

from .graph_args import GraphArgsMeta

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

    def __init__(self, channels, reduction=16):
        super().__init__()
        hidden = max(8, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        """Gate the channels of `x`."""
        return x * self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))).sigmoid()
