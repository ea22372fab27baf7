"""EMA's export-time forward: the published equations written with operators every deployment runtime supports.

The training forward folds the channel groups into the batch (B x G, C / G, H, W), as the published code does, and
writes the 3x3 branch as shifted in-place slice additions; traced, that becomes dozens of Reshape, Crop and CopyTo
layers with the export size written into them, for runtimes that may have no batch axis of their own (NCNN reads a
4-D tensor as (C, D, H, W)). Here the groups stay in the channel dimension: every per-group operation is a grouped convolution whose
weight is the shared per-group weight tiled G times, and a group's channel sum is a grouped 1x1 convolution with
an all-ones weight, which also broadcasts the sum back to the group's channels. The graph is Conv, ReduceMean,
ReduceMax, Abs, Clip, Sigmoid, Softmax, Mul, Add, Sub, Sqrt, Div and a Reshape on each side of the softmax, in the
input's dtype; it stays finite in float16 (see the GroupNorm step).
"""

import torch
import torch.nn.functional as F

__all__ = ("ema_export_forward",)


def ema_export_forward(x, groups, gn, conv1x1, conv3x3):
    """EMA of `x` (B, C, H, W) with `groups` groups, from the layers of an `EMA` module, in export-friendly operators.

    Equal to the published module (Ouyang et al., arXiv 2305.13563) up to floating-point rounding, including the
    spatial mean of the GroupNorm output, taken as its bias (exact for any input, and a constant in the graph).

    Args:
        x (torch.Tensor): Input (B, C, H, W), C divisible by `groups`.
        groups (int): Channel groups G.
        gn (nn.GroupNorm): GroupNorm(C / G, C / G) shared by the groups.
        conv1x1 (nn.Conv2d): 1x1 convolution C / G -> C / G shared by the groups.
        conv3x3 (nn.Conv2d): 3x3 convolution C / G -> C / G (padding 1) shared by the groups.

    Returns:
        (torch.Tensor): Output (B, C, H, W), dtype of `x`.

    Example:
        >>> from ema_yolo.nn import EMA
        >>> m = EMA(64)
        >>> ema_export_forward(torch.randn(1, 64, 8, 8), m.groups, m.gn, m.conv1x1, m.conv3x3).shape
        torch.Size([1, 64, 8, 8])
    """
    g, cg = groups, gn.num_channels  # Python ints: the weights below have static shapes in dynamic-shape exports
    c, dt = g * cg, x.dtype

    def tile(t):  # a per-group parameter repeated for the G groups along the output channels
        return t.to(dt).repeat(g, *(1,) * (t.dim() - 1))

    def conv(inp, layer, **kwargs):  # grouped conv, tiled weight; the bias added apart: X2Paddle needs it constant
        return F.conv2d(inp, tile(layer.weight), groups=g, **kwargs) + tile(layer.bias).view(1, c, 1, 1)

    # Directional pooling and the shared 1x1 conv: gates (B, C, H, 1) and (B, C, 1, W).
    gate_h = conv(x.mean(3, keepdim=True), conv1x1).sigmoid()
    gate_w = conv(x.mean(2, keepdim=True), conv1x1).sigmoid()

    # GroupNorm(cg, cg) normalises each channel over (H, W). The deviations are divided by their largest magnitude
    # before squaring, so the variance cannot overflow in float16 exports (|d| > 256 would square past 65504).
    t = x * gate_h * gate_w
    d = t - t.mean((2, 3), keepdim=True)
    a = d.abs().amax((2, 3), keepdim=True).clamp(min=gn.eps)  # PNNX does not convert clamp_min
    u = d / a
    eps = a * 0 + gn.eps  # a tensor, as the ones below: X2Paddle has no scalar / tensor operator
    x1 = u / torch.sqrt((u * u).mean((2, 3), keepdim=True) + eps / (a * a)) * tile(gn.weight).view(1, c, 1, 1)
    x1 = x1 + tile(gn.bias).view(1, c, 1, 1)

    # 3x3 branch and the two cross-spatial softmaxes (over each group's channels).
    x2 = conv(x, conv3x3, padding=1)
    s1 = tile(torch.softmax(gn.bias, 0)).view(1, c, 1, 1)  # softmax of the spatial mean of x1, which is gn.bias
    s2 = torch.softmax(x2.mean((2, 3)).view(-1, g, cg), -1).view(-1, c, 1, 1)

    # Per group: sum_k s1[k] x2[k] + s2[k] x1[k], summed and broadcast back to the group's channels by one conv.
    # An all-ones (C, cg, 1, 1) weight computed from a weight: LiteRT's int8 quantiser rejects tensors created in
    # forward (torch.ones), X2Paddle has no aten::ones_like.
    ones = tile(conv1x1.weight) * 0 + 1
    return x * F.conv2d(x2 * s1 + x1 * s2, ones, groups=g).sigmoid()
