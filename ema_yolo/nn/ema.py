"""Efficient Multi-Scale Attention (EMA), computed without the published module's expensive operators.

Ouyang et al., "Efficient Multi-Scale Attention Module with Cross-Spatial Learning", ICASSP 2023, arXiv 2305.13563.
"""

import logging

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ("EMA", "ema_groups")

LOGGER = logging.getLogger("ema_yolo")
_fallbacks_reported = set()


def ema_groups(channels, factor=32):
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
        raise TypeError(
            f"EMA needs a positive int channel count, got {channels!r}. In a model YAML write the row as "
            "`[-1, 1, EMA, [c2]]`: ema-yolo relies on Ultralytics' parse_model resolving 'c2' to the previous "
            "layer's output channels, and this Ultralytics version did not."
        )
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"EMA factor must be a positive int, got {factor!r}")
    return next(g for g in range(min(factor, channels), 0, -1) if channels % g == 0)


def _window_indicators(n, like):
    """Return an (n, 3) 0/1 matrix whose columns select indices [0, n-1), [0, n) and [1, n)."""
    index = torch.arange(n, device=like.device)
    return torch.stack((index < n - 1, index >= 0, index > 0), dim=1).to(like.dtype)


def _group_conv(x, kernel, groups):
    """Sum over each group's channels of a 3x3 conv with one kernel per channel: (B, C, H, W) -> (B, G, H, W)."""
    b, c, h, w = x.shape
    weight = kernel.repeat(groups, 1, 1).unsqueeze(1)  # (C, 1, 3, 3): a depthwise conv, fast on every backend
    return F.conv2d(x, weight, padding=1, groups=c).view(b, groups, c // groups, h, w).sum(2)


class EMA(nn.Module):
    """Efficient Multi-Scale Attention (Ouyang et al., ICASSP 2023, arXiv 2305.13563).

    Mathematically identical to the published module (`EMAReference`), forward and backward, with the same
    parameters (`gn`, `conv1x1`, `conv3x3`, shared by all groups), so a published state dict loads with
    `strict=True`. It is faster because it never builds what the output does not need:

    - the groups stay in the channel dimension; directional pooling is `mean`, not adaptive pooling, so dynamic-shape
      ONNX export is correct and the CUDA backward is deterministic;
    - the spatial mean of a GroupNorm(cg, cg) output is exactly its bias, so the first softmax is `softmax(gn.bias)`;
    - the 3x3 branch only enters as (a) its spatial mean, computed from border sums of the input, and (b) a
      softmax-weighted sum over its output channels, which is a depthwise 3x3 convolution (one kernel per input
      channel, shared by the groups) summed over each group's channels: no cg -> cg convolution is ever run;
    - the GroupNorm branch only enters as a softmax-weighted channel sum, folded into one batched matmul.

    Group rule: EMA uses G = `factor` groups when `factor` divides `channels`; otherwise (including `channels <
    factor`) it uses the largest divisor of `channels` that is <= `factor` and logs that once. It never asserts.

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

    def __init__(self, channels, factor=32):
        super().__init__()
        groups = ema_groups(channels, factor)
        if groups != factor and (channels, factor) not in _fallbacks_reported:
            _fallbacks_reported.add((channels, factor))
            LOGGER.warning(f"EMA: {channels} channels are not a multiple of factor {factor}; using {groups} groups")
        self.channels, self.groups, self.group_channels = channels, groups, channels // groups
        cg = self.group_channels
        self.gn = nn.GroupNorm(cg, cg)
        self.conv1x1 = nn.Conv2d(cg, cg, kernel_size=1)
        self.conv3x3 = nn.Conv2d(cg, cg, kernel_size=3, padding=1)

    def extra_repr(self):
        """Describe the grouping."""
        return f"channels={self.channels}, groups={self.groups}"

    def forward(self, x):
        """Apply EMA to `x` of shape (B, C, H, W)."""
        if not torch.jit.is_tracing() and x.shape[1] != self.channels:
            raise ValueError(
                f"EMA was built for {self.channels} channels but got {x.shape[1]}: an attention row in a model YAML "
                "must read from the layer just before it (from = -1)"
            )
        g, cg = self.groups, self.group_channels
        b, _, h, w = x.shape  # batch and spatial sizes stay symbolic in exports; g and cg are Python ints
        z = x.reshape(b, g, cg, h, w)

        # Row sums of z over three column windows (all but the last, all, all but the first): the middle one gives
        # the width pooling, and with the same split of rows they give every 3x3 tap's zero-padded window sum.
        cols, rows = _window_indicators(w, z), _window_indicators(h, z)  # (W, 3), (H, 3)
        row_sums = torch.matmul(z, cols)  # (B, G, cg, H, 3)
        pooled_h = row_sums[..., 1] / w  # (B, G, cg, H)
        pooled_w = z.mean(3)  # (B, G, cg, W)

        # Branch 1: y1 = gn(z * a_h * a_w), the shared 1x1 conv applied to both pooled directions.
        w1, b1 = self.conv1x1.weight.flatten(1), self.conv1x1.bias.unsqueeze(-1)
        gate_h = torch.sigmoid(torch.matmul(w1, pooled_h) + b1)
        gate_w = torch.sigmoid(torch.matmul(w1, pooled_w) + b1)
        t = (z * gate_h.unsqueeze(-1) * gate_w.unsqueeze(-2)).flatten(0, 1)  # (B*G, cg, H, W), a free view
        y1 = self.gn(t)  # (B*G, cg, H, W)

        # Branch 2 enters only as its spatial mean and a weighted sum over its output channels; neither needs the
        # cg -> cg 3x3 conv itself. Its mean comes from window sums (zero padding drops one row/column per tap).
        taps = torch.matmul(rows.transpose(0, 1), row_sums)  # (B, G, cg, 3 [ky], 3 [kx])
        w3, b3 = self.conv3x3.weight, self.conv3x3.bias
        conv3_mean = torch.einsum("kjyx,bgjyx->bgk", w3.to(taps.dtype), taps) / (h * w) + b3
        acc = torch.promote_types(x.dtype, torch.float32)  # softmaxes at >= float32 precision
        s2 = torch.softmax(conv3_mean.to(acc), -1)  # (B, G, cg)
        s1 = torch.softmax(self.gn.bias.to(acc), 0)  # (cg,): the spatial mean of gn(.) is exactly its bias

        # m = sum_k s1[k] conv3x3(z)[k] + sum_k s2[k] y1[k]. The first sum is one 3x3 kernel per input channel
        # (a depthwise conv, fast everywhere) summed over each group's channels.
        kernel = torch.einsum("k,kjyx->jyx", s1, w3.to(acc)).to(x.dtype)  # (cg, 3, 3), shared by all groups
        m_conv = _group_conv(x, kernel, g)  # (B, G, H, W)
        m_norm = torch.matmul(s2.to(y1.dtype).view(b, g, 1, cg), y1.view(b, g, cg, h * w)).view(b, g, h, w)
        m = m_conv + m_norm + (s1 * b3.to(acc)).sum().to(x.dtype)
        return (z * torch.sigmoid(m).to(x.dtype).unsqueeze(2)).flatten(1, 2)
