"""The spatial weighting of each attention layer in a model, recorded with hooks during an ordinary forward pass.

Every layer's map comes from the layer's own gates, not from a saliency method: EMA's per-pixel sigmoid weights per
channel group (`EMA.spatial_weights`), CBAM's spatial gate (the sigmoid of its `spatial` conv), and Coordinate
Attention's height and width gates multiplied into one (C, H, W) gate. SE gates channels only: it has no spatial map.
"""

import functools

from ..nn import CA, CBAM, EMA, SE

__all__ = ("NO_SPATIAL_MAP", "AttentionRecorder", "attention_layers")

NO_SPATIAL_MAP = {"SE": "SE gates channels only: no spatial map"}  # by class name, as layers are named


def _ema_hooks(module, store):
    return [module.register_forward_pre_hook(lambda m, args: store(m.spatial_weights(args[0])))]


def _cbam_hooks(module, store):
    return [module.spatial.register_forward_hook(lambda m, args, out: store(out.detach().float().sigmoid()))]


def _ca_hooks(module, store):
    gates = {}

    def height(m, args, out):
        gates["h"] = out.detach().float().sigmoid()  # (B, C, H, 1)

    def width(m, args, out):  # conv_w runs after conv_h
        store(gates.pop("h") * out.detach().float().sigmoid())  # (B, C, 1, W) -> (B, C, H, W)

    return [module.conv_h.register_forward_hook(height), module.conv_w.register_forward_hook(width)]


_HOOKS = {EMA: _ema_hooks, CBAM: _cbam_hooks, CA: _ca_hooks}


def attention_layers(model):
    """Return [(name, module)] of the attention layers (EMA, CBAM, CA, SE) in `model`, in forward order.

    A layer that is a row of an Ultralytics model YAML is named by the row index (`m.i`); one inside a row's block
    (`ema_yolo.nn.csp_attn`, e.g. `model.2.m.0.attn`) by that row's index and its path inside the block
    (`2.m.0.attn`); any other by its module path.

    Args:
        model (torch.nn.Module): Any model.

    Returns:
        (list[tuple[str, torch.nn.Module]]): E.g. [('7 EMA', EMA(...)), ('10 EMA', EMA(...))] or
            [('2.m.0.attn EMA', EMA(...)), ...], '<index or path> <class name>'.
    """
    kinds, rows, layers = (*_HOOKS, SE), {}, []
    for path, m in model.named_modules():
        if hasattr(m, "i"):
            rows[path] = m.i
        if type(m) in kinds:
            row = max((p for p in rows if path == p or path.startswith(p + ".")), key=len, default=None)
            name = path if row is None else f"{rows[row]}{path[len(row):]}"  # named_modules lists parents first
            layers.append((f"{name} {type(m).__name__}", m))
    return layers


class AttentionRecorder:
    """Context manager that records every attention layer's spatial weights during the forward passes inside it.

    After the block, `maps[name]` holds the last pass's weights of layer `name` as (B, K, h, w) float tensors (K
    weight planes: EMA's G groups, CBAM's single gate, CA's C channel gates) at the layer's own resolution, and
    `input` the model's input tensor (B, 3, H, W) of that pass; layers without a spatial map (SE) are listed in `maps`
    with None.

    Args:
        model (torch.nn.Module): The model (e.g. an Ultralytics `DetectionModel`) whose forward is called.

    Example:
        >>> with AttentionRecorder(model) as rec:
        ...     model(torch.zeros(1, 3, 64, 64))
        >>> {name: tuple(m.shape) for name, m in rec.maps.items()}
        {'7 EMA': (1, 32, 4, 4), '10 EMA': (1, 32, 2, 2)}
    """

    def __init__(self, model):
        self.model, self.layers, self.maps, self.input, self._handles = model, attention_layers(model), {}, None, []

    def __enter__(self):
        def record_input(m, args):
            self.input = args[0].detach()

        self._handles.append(self.model.register_forward_pre_hook(record_input))
        for name, module in self.layers:
            self.maps[name] = None
            if type(module) in _HOOKS:
                self._handles += _HOOKS[type(module)](module, functools.partial(self._store, name))
        return self

    def _store(self, name, weights):
        self.maps[name] = weights.float()

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

