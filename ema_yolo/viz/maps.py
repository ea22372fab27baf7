"""The spatial weighting of each attention layer in a model, recorded with hooks during an ordinary forward pass.

Every layer's map comes from the layer's own gates, not from a saliency method, read as the registry says
(`ema_yolo.nn.registry`, `ema_yolo.nn.spatial_maps`): EMA's per-pixel sigmoid weights per channel group, CBAM's
spatial gate, Coordinate Attention's height and width gates multiplied into one (C, H, W) gate. SE and ECA gate
channels only: they have no spatial map.
"""

from __future__ import annotations

import functools

from torch import nn

from ..nn.registry import REGISTRY

__all__ = ("ATTENTION_NAMES", "NO_SPATIAL_MAP", "AttentionRecorder", "attention_layers")

ATTENTION_NAMES = [layer.name for layer in REGISTRY.values()]  # as layers are named: EMA, CBAM, ...
_READERS = {layer.cls: layer.spatial_map for layer in REGISTRY.values()}  # class -> map reader, or None
NO_SPATIAL_MAP = {layer.name: f"{layer.name} gates channels only: no spatial map"
                  for layer in REGISTRY.values() if layer.spatial_map is None}  # by class name, as layers are named


def attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return [(name, module)] of the attention layers (those of the registry) in `model`, in forward order.

    A layer that is a row of an Ultralytics model YAML is named by the row index (`m.i`); one inside a row's block
    (`ema_yolo.nn.csp_attn`, e.g. `model.2.m.0.attn`) by that row's index and its path inside the block
    (`2.m.0.attn`); any other by its module path.

    Args:
        model (torch.nn.Module): Any model.

    Returns:
        (list[tuple[str, torch.nn.Module]]): E.g. [('7 EMA', EMA(...)), ('10 EMA', EMA(...))] or
            [('2.m.0.attn EMA', EMA(...)), ...], '<index or path> <class name>'.
    """
    rows, layers = {}, []
    for path, m in model.named_modules():
        if hasattr(m, "i"):
            rows[path] = m.i
        if type(m) in _READERS:
            row = max((p for p in rows if path == p or path.startswith(p + ".")), key=len, default=None)
            name = path if row is None else f"{rows[row]}{path[len(row):]}"  # named_modules lists parents first
            layers.append((f"{name} {type(m).__name__}", m))
    return layers


class AttentionRecorder:
    """Context manager that records every attention layer's spatial weights during the forward passes inside it.

    After the block, `maps[name]` holds the last pass's weights of layer `name` as (B, K, h, w) float tensors (K
    weight planes: EMA's G groups, CBAM's single gate, CA's C channel gates) at the layer's own resolution, and
    `input` the model's input tensor (B, 3, H, W) of that pass; layers without a spatial map (SE, ECA) are listed in `maps`
    with None.

    Args:
        model (torch.nn.Module): The model (e.g. an Ultralytics `DetectionModel`) whose forward is called.

    Example:
        >>> with AttentionRecorder(model) as rec:
        ...     model(torch.zeros(1, 3, 64, 64))
        >>> {name: tuple(m.shape) for name, m in rec.maps.items()}
        {'7 EMA': (1, 32, 4, 4), '10 EMA': (1, 32, 2, 2)}
    """

    def __init__(self, model: nn.Module):
        self.model, self.layers, self.maps, self.input, self._handles = model, attention_layers(model), {}, None, []

    def __enter__(self):
        def record_input(m, args):
            self.input = args[0].detach()

        self._handles.append(self.model.register_forward_pre_hook(record_input))
        for name, module in self.layers:
            self.maps[name] = None
            if _READERS[type(module)] is not None:
                self._handles += _READERS[type(module)](module, functools.partial(self._store, name))
        return self

    def _store(self, name, weights):
        self.maps[name] = weights.float()

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

