"""EMA's export-time forward: the published equations written with operators every deployment runtime supports.

The training forward folds the channel groups into the batch (B x G, C / G, H, W), as the published code does, and
writes the 3x3 branch as shifted in-place slice additions; traced, that becomes dozens of Reshape, Crop and CopyTo
layers with the export size written into them, for runtimes that may have no batch axis of their own (NCNN reads a
4-D tensor as (C, D, H, W)). Here the groups stay in the channel dimension: every per-group operation is a grouped convolution whose
weight is the shared per-group weight tiled G times, and a group's channel sum is a grouped 1x1 convolution with
an all-ones weight, which also broadcasts the sum back to the group's channels. While a graph is traced or exported the tiled
weights are a snapshot taken from the parameters (`export_weights`), so every exporter sees them as constants: computed
inside the graph, they are
activations to LiteRT's int8 quantiser, which then gives a convolution weight a non-zero zero point that TFLite's int8
convolution kernel refuses. The graph is Conv, ReduceMean, ReduceMax, Abs, Clip, Pow, Sigmoid, Softmax, Mul, Add, Sub
and a Reshape on each side of the softmax, in the input's dtype; it stays finite in float16 (see the
GroupNorm step).
"""

import torch
import torch.nn.functional as F

__all__ = ("ema_export_forward", "export_weights")


def export_weights(groups, gn, conv1x1, conv3x3):
    """The constant tensors of EMA's export forward: the per-group parameters of an `EMA` module tiled over its groups.

    Args:
        groups (int): Channel groups G.
        gn (nn.GroupNorm): GroupNorm(C / G, C / G) shared by the groups.
        conv1x1 (nn.Conv2d): 1x1 convolution C / G -> C / G shared by the groups.
        conv3x3 (nn.Conv2d): 3x3 convolution C / G -> C / G (padding 1) shared by the groups.

    Returns:
        (dict[str, torch.Tensor]): Tensors in the layers' dtype (differentiable in the parameters), C = G * C / G: `conv1x1` (C, C / G, 1, 1),
            `conv3x3` (C, C / G, 3, 3) and `ones` (C, C / G, 1, 1) grouped-convolution weights; `conv1x1_bias`,
            `conv3x3_bias`, `gn_weight`, `gn_bias` and `softmax_gn_bias` (the first cross-spatial softmax), each
            (1, C, 1, 1).

    Example:
        >>> from ema_yolo.nn import EMA
        >>> m = EMA(64)
        >>> export_weights(m.groups, m.gn, m.conv1x1, m.conv3x3)["conv3x3"].shape
        torch.Size([64, 2, 3, 3])
    """

    def tile(t):  # a per-group parameter repeated for the G groups along the output channels
        return t.repeat(groups, *(1,) * (t.dim() - 1)).contiguous()

    def channels(t):
        return tile(t).view(1, -1, 1, 1)

    return {
        "conv1x1": tile(conv1x1.weight),
        "conv1x1_bias": channels(conv1x1.bias),
        "conv3x3": tile(conv3x3.weight),
        "conv3x3_bias": channels(conv3x3.bias),
        "gn_weight": channels(gn.weight),
        "gn_bias": channels(gn.bias),
        "softmax_gn_bias": channels(torch.softmax(gn.bias, 0)),  # softmax of the spatial mean of x1, which is gn.bias
        "ones": torch.ones_like(tile(conv1x1.weight)),
    }


def ema_export_forward(x, groups, group_channels, eps, weights):
    """EMA of `x` (B, C, H, W) with `groups` groups, from an `EMA` module's `export_weights`, in export-friendly operators.

    Equal to the published module (Ouyang et al., arXiv 2305.13563) up to floating-point rounding, including the
    spatial mean of the GroupNorm output, taken as its bias (exact for any input, and a constant in the graph).

    Args:
        x (torch.Tensor): Input (B, C, H, W), C divisible by `groups`.
        groups (int): Channel groups G.
        group_channels (int): Channels per group C / G.
        eps (float): The GroupNorm's epsilon.
        weights (dict[str, torch.Tensor]): `export_weights` of the module's layers (cast to `x`'s dtype here).

    Returns:
        (torch.Tensor): Output (B, C, H, W), dtype of `x`.

    Example:
        >>> from ema_yolo.nn import EMA
        >>> m = EMA(64)
        >>> w = export_weights(m.groups, m.gn, m.conv1x1, m.conv3x3)
        >>> ema_export_forward(torch.randn(1, 64, 8, 8), m.groups, m.group_channels, m.gn.eps, w).shape
        torch.Size([1, 64, 8, 8])
    """
    g, cg = groups, group_channels  # Python ints: the reshapes below stay static in dynamic-shape exports
    w = {name: t.to(x.dtype) for name, t in weights.items()}

    def conv(inp, name, **kwargs):  # grouped conv; the bias added apart: X2Paddle needs a constant convolution bias
        return F.conv2d(inp, w[name], groups=g, **kwargs) + w[f"{name}_bias"]

    # Directional pooling and the shared 1x1 conv: gates (B, C, H, 1) and (B, C, 1, W).
    gate_h = conv(x.mean(3, keepdim=True), "conv1x1").sigmoid()
    gate_w = conv(x.mean(2, keepdim=True), "conv1x1").sigmoid()

    # GroupNorm(cg, cg) normalises each channel over (H, W): d / sqrt(mean(d^2) + eps) = u / sqrt(mean(u^2) + eps / a^2)
    # for u = d / a and any a > 0. a = max(1, max |d|) keeps |u| <= 1, so the variance cannot overflow in float16
    # exports (|d| > 256 would square past 65504). Pow rather than Div: LiteRT's int8 quantiser quantises Div, and
    # TFLite's int8 Div fails on a divisor that rounds to zero; it leaves Pow in float.
    t = x * gate_h * gate_w
    d = t - t.mean((2, 3), keepdim=True)
    inv_a = d.abs().amax((2, 3), keepdim=True).clamp(min=1.0).pow(-1)  # PNNX does not convert clamp_min
    u = d * inv_a
    x1 = u * ((u * u).mean((2, 3), keepdim=True) + inv_a * inv_a * eps).pow(-0.5) * w["gn_weight"] + w["gn_bias"]

    # 3x3 branch and the two cross-spatial softmaxes (over each group's channels).
    x2 = conv(x, "conv3x3", padding=1)
    s2 = torch.softmax(x2.mean((2, 3)).view(-1, g, cg), -1).view(-1, g * cg, 1, 1)

    # Per group: sum_k s1[k] x2[k] + s2[k] x1[k], summed and broadcast back to the group's channels by one conv.
    return x * F.conv2d(x2 * w["softmax_gn_bias"] + x1 * s2, w["ones"], groups=g).sigmoid()
