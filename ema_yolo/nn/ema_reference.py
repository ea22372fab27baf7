"""Paper-faithful EMA with the published operator structure: the tests' oracle, the benchmark's baseline, and the path
`EMA` takes on a device where it measures faster (`ema_path`)."""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ("EMAReference", "published_ema")


def published_ema(x, groups, gn, conv1x1, conv3x3):
    """EMA of `x` (B, C, H, W) computed with the published code's operators (github.com/YOLOonMe/EMA-attention-module).

    The layers' parameters are used in `x`'s dtype through the functional ops, so no module hook fires.

    Args:
        x (torch.Tensor): Input (B, C, H, W), C a multiple of `groups`.
        groups (int): Channel groups G.
        gn (nn.GroupNorm): GroupNorm(C / G, C / G), shared by the groups.
        conv1x1 (nn.Conv2d): The shared 1x1 convolution, C / G -> C / G.
        conv3x3 (nn.Conv2d): The shared 3x3 convolution, C / G -> C / G, padding 1.

    Returns:
        (torch.Tensor): Output (B, C, H, W), `x`'s dtype.
    """
    b, c, h, w = x.size()
    gn_w, gn_b, w1, b1, w3, b3 = (
        p.to(x.dtype) for p in (gn.weight, gn.bias, conv1x1.weight, conv1x1.bias, conv3x3.weight, conv3x3.bias)
    )
    gx = x.reshape(b * groups, -1, h, w)
    x_h = F.adaptive_avg_pool2d(gx, (None, 1))
    x_w = F.adaptive_avg_pool2d(gx, (1, None)).permute(0, 1, 3, 2)
    hw = F.conv2d(torch.cat([x_h, x_w], dim=2), w1, b1)
    x_h, x_w = torch.split(hw, [h, w], dim=2)
    x1 = F.group_norm(gx * x_h.sigmoid() * x_w.permute(0, 1, 3, 2).sigmoid(), gn.num_groups, gn_w, gn_b, gn.eps)
    x2 = F.conv2d(gx, w3, b3, padding=1)
    x11 = torch.softmax(F.adaptive_avg_pool2d(x1, (1, 1)).reshape(b * groups, -1, 1).permute(0, 2, 1), -1)
    x12 = x2.reshape(b * groups, c // groups, -1)
    x21 = torch.softmax(F.adaptive_avg_pool2d(x2, (1, 1)).reshape(b * groups, -1, 1).permute(0, 2, 1), -1)
    x22 = x1.reshape(b * groups, c // groups, -1)
    weights = (torch.matmul(x11, x12) + torch.matmul(x21, x22)).reshape(b * groups, 1, h, w)
    return (gx * weights.sigmoid()).reshape(b, c, h, w)


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

    def __init__(self, channels: int, factor: int = 32):
        super().__init__()
        if channels % factor or channels < factor:
            raise ValueError(f"EMAReference needs channels ({channels}) to be a multiple of factor ({factor})")
        self.groups = factor
        cg = channels // factor
        self.gn = nn.GroupNorm(cg, cg)
        self.conv1x1 = nn.Conv2d(cg, cg, kernel_size=1)
        self.conv3x3 = nn.Conv2d(cg, cg, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply EMA to `x` of shape (B, C, H, W)."""
        return published_ema(x, self.groups, self.gn, self.conv1x1, self.conv3x3)
