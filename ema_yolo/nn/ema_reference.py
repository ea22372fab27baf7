"""Paper-faithful EMA with the published operator structure: the tests' oracle and the benchmark's baseline."""

import torch
from torch import nn

__all__ = ("EMAReference",)


class EMAReference(nn.Module):
    """Efficient Multi-Scale Attention as published (Ouyang et al., ICASSP 2023, arXiv 2305.13563).

    Channel groups are folded into the batch, pooling uses adaptive pools and the 3x3 branch is a full cg->cg
    convolution, exactly as in the authors' code. Kept for reference only: use `ema_yolo.nn.EMA` in models.

    Args:
        channels (int): Input channels; must be a multiple of `factor`.
        factor (int): Number of channel groups.

    Shape:
        Input (B, C, H, W) -> output (B, C, H, W).

    Example:
        >>> m = EMAReference(64, factor=32)
        >>> m(torch.randn(2, 64, 20, 20)).shape
        torch.Size([2, 64, 20, 20])
    """

    def __init__(self, channels, factor=32):
        super().__init__()
        if channels % factor or channels < factor:
            raise ValueError(f"EMAReference needs channels ({channels}) to be a multiple of factor ({factor})")
        self.groups = factor
        cg = channels // factor
        self.softmax = nn.Softmax(-1)
        self.agp = nn.AdaptiveAvgPool2d((1, 1))
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        self.gn = nn.GroupNorm(cg, cg)
        self.conv1x1 = nn.Conv2d(cg, cg, kernel_size=1)
        self.conv3x3 = nn.Conv2d(cg, cg, kernel_size=3, padding=1)

    def forward(self, x):
        """Apply EMA to `x` of shape (B, C, H, W)."""
        b, c, h, w = x.size()
        gx = x.reshape(b * self.groups, -1, h, w)
        x_h = self.pool_h(gx)
        x_w = self.pool_w(gx).permute(0, 1, 3, 2)
        hw = self.conv1x1(torch.cat([x_h, x_w], dim=2))
        x_h, x_w = torch.split(hw, [h, w], dim=2)
        x1 = self.gn(gx * x_h.sigmoid() * x_w.permute(0, 1, 3, 2).sigmoid())
        x2 = self.conv3x3(gx)
        x11 = self.softmax(self.agp(x1).reshape(b * self.groups, -1, 1).permute(0, 2, 1))
        x12 = x2.reshape(b * self.groups, c // self.groups, -1)
        x21 = self.softmax(self.agp(x2).reshape(b * self.groups, -1, 1).permute(0, 2, 1))
        x22 = x1.reshape(b * self.groups, c // self.groups, -1)
        weights = (torch.matmul(x11, x12) + torch.matmul(x21, x22)).reshape(b * self.groups, 1, h, w)
        return (gx * weights.sigmoid()).reshape(b, c, h, w)
