"""How each attention layer's spatial weighting is read during an ordinary forward pass, with hooks.

Every map comes from the layer's own gates, not from a saliency method: EMA's per-pixel sigmoid weights per channel
group (`EMA.spatial_weights`), CBAM's spatial gate (the sigmoid of its `spatial` conv), and Coordinate Attention's
height and width gates multiplied into one (C, H, W) gate. The registry (`ema_yolo.nn.registry`) names the reader of
each layer; `ema_yolo.viz.maps` records with them.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ("MapReader", "ca_map", "cbam_map", "ema_map")

MapReader = Callable[[nn.Module, Callable[[torch.Tensor], None]], "list[RemovableHandle]"]
"""`reader(module, store)` registers hooks on `module` that call `store(weights)` with its (B, K, h, w) weights on each
forward pass, and returns their handles."""


def ema_map(module: nn.Module, store: Callable[[torch.Tensor], None]) -> list[RemovableHandle]:
    """EMA: its per-pixel sigmoid weights, one plane per channel group (B, G, H, W)."""
    return [module.register_forward_pre_hook(lambda m, args: store(m.spatial_weights(args[0])))]


def cbam_map(module: nn.Module, store: Callable[[torch.Tensor], None]) -> list[RemovableHandle]:
    """CBAM: its spatial gate (B, 1, H, W)."""
    return [module.spatial.register_forward_hook(lambda m, args, out: store(out.detach().float().sigmoid()))]


def ca_map(module: nn.Module, store: Callable[[torch.Tensor], None]) -> list[RemovableHandle]:
    """Coordinate Attention: its height gate times its width gate (B, C, H, W)."""
    gates = {}

    def height(m, args, out):
        gates["h"] = out.detach().float().sigmoid()  # (B, C, H, 1)

    def width(m, args, out):  # conv_w runs after conv_h
        store(gates.pop("h") * out.detach().float().sigmoid())  # (B, C, 1, W) -> (B, C, H, W)

    return [module.conv_h.register_forward_hook(height), module.conv_w.register_forward_hook(width)]
