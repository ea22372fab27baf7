"""The function-preserving start of attention layers inserted into a pretrained network.

The published attention layers multiply their input by a sigmoid gate (EMA, SE) or two (CBAM, CA). Inserted at
their published initialisation into a stock checkpoint, they scale every feature map they gate by about 0.5 to
0.25, differently at every pixel, and a real trained detector loses most of its detections before the first step
(issue #19: 8 of 45 stock boxes kept on COCO photos by a real YOLOv8s into yolov8s-ema).

The start here keeps the stock function exactly while every gate stays trainable:
- each new layer's gate is made a constant g (`constant_gate_()`: 0.5 per sigmoid, where it is steepest, so the
  layer computes `g * x`);
- an attention row (a layer of its own): the layers that read it absorb 1 / g, by scaling the input channels of the
  first convolutions that read it, through Concat, Upsample and max-pool layers that commute with a positive factor
  (before BatchNorm, so BatchNorm sees the same values). 1 / g is a power of two, so the products are exact. Each
  reader is checked on the probe's real inputs; a reader that cannot absorb the factor (it uses its input other than
  through a convolution) leaves that layer at the published initialisation, with a warning naming both;
- an attention layer inside a bottleneck (`C2fEMA`...): the shortcut add cannot absorb a factor, so the bottleneck
  keeps it (`AttnBottleneck.gain = 1 / g`, saved in its state dict).

`EMA_YOLO_START=published` keeps the published initialisation after a transfer too; training from scratch always
uses it.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..nn.registry import ATTENTION_TYPES

__all__ = ("START_ENV", "StartReport", "layer_sources", "start_choice", "start_new_layers")

START_ENV = "EMA_YOLO_START"  # "function-preserving" (default) or "published"
_CHOICES = ("function-preserving", "published")
_COMMUTING = (nn.Upsample, nn.MaxPool2d, nn.Identity)  # parameter-free layers with f(g * x) == g * f(x) for g > 0


def start_choice() -> str:
    """Return the start named by `EMA_YOLO_START`: 'function-preserving' (unset or empty) or 'published'.

    Raises:
        ValueError: If the variable holds anything else, or the replaced `EMA_YOLO_INIT` is set.
    """
    if os.environ.get("EMA_YOLO_INIT"):
        raise ValueError(
            f"EMA_YOLO_INIT is no longer read: inserted layers now start function-preserving by default; "
            f"{START_ENV}=published gives the published initialisation"
        )
    choice = os.environ.get(START_ENV, "").strip().lower() or _CHOICES[0]
    if choice not in _CHOICES:
        raise ValueError(f"{START_ENV}={choice!r}: expected one of {', '.join(_CHOICES)}")
    return choice


class StartReport:
    """What `start_new_layers` did.

    Attributes:
        rows (list[tuple[int, float]]): Attention rows started as a constant gate: (layer index, gate g).
        blocks (int): Bottlenecks whose attention started as a constant gate, with `gain = 1 / g`.
        readers (list[str]): Convolutions whose input channels absorbed 1 / g (module names).
        published (list[tuple[int, str]]): Rows left at the published initialisation: (layer index, why).
    """

    def __init__(self):
        self.rows, self.blocks, self.readers, self.published = [], 0, [], []

    def __str__(self):
        parts = []
        if self.rows:
            gates = "/".join(sorted({f"{g:g}" for _, g in self.rows}))
            parts.append(f"{len(self.rows)} attention row{'s' * (len(self.rows) != 1)} as constant gates {gates}, "
                         f"absorbed by {len(self.readers)} reading convolution{'s' * (len(self.readers) != 1)}")
        if self.blocks:
            parts.append(f"attention in {self.blocks} bottleneck{'s' * (self.blocks != 1)} as constant gates, "
                         f"compensated by the block")
        text = "function-preserving start: " + "; ".join(parts) if parts else ""
        for index, why in self.published:
            text += f"{'; ' if text else ''}model.{index} keeps the published initialisation ({why})"
        return text


def layer_sources(layer: nn.Module, index: int) -> list[int]:
    """Absolute indices of the layers that Ultralytics layer `index` reads from (its `.f`; -1 is the image)."""
    f = layer.f if isinstance(layer.f, (list, tuple)) else [layer.f]
    return [index + k if k < 0 else k for k in f]


def _layer_inputs(model):
    """Run a probe image through `model` (in eval mode); return each layer's input (a tensor or a list of tensors)."""
    layers, inputs = model.model, {}

    def keep(index):
        def hook(_, args):
            x = args[0]
            inputs[index] = list(x) if isinstance(x, (list, tuple)) else x  # a copy: heads edit their list in place

        return hook

    handles = [m.register_forward_pre_hook(keep(i)) for i, m in enumerate(layers)]
    stride = int(max(getattr(model, "stride", torch.tensor([32])).max().item(), 32))
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    param = next(model.parameters())
    probe = torch.rand(1, first.in_channels, 2 * stride, 2 * stride, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            model(probe.to(param))
    finally:
        for h in handles:
            h.remove()
    return inputs


def _slot(inputs, position):
    return inputs[position] if isinstance(inputs, list) else inputs


def _with_scaled(inputs, position, channels, factor):
    """A copy of a layer's inputs with `channels` of input `position` multiplied by `factor`."""
    tensors = list(inputs) if isinstance(inputs, list) else [inputs]
    t = tensors[position].clone()
    t[:, channels] *= factor
    tensors[position] = t
    return tensors if isinstance(inputs, list) else t


def _input_convs(layer, inputs, position):
    """The Conv2d modules inside `layer` that read input `position` itself (the same storage), found by running it."""
    target, seen = _slot(inputs, position), []

    def hook(conv, args):
        x = args[0]
        if x.data_ptr() == target.data_ptr() and x.shape == target.shape:
            seen.append(conv)

    handles = [m.register_forward_pre_hook(hook) for m in layer.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            output = layer(list(inputs) if isinstance(inputs, list) else inputs)
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(seen)), output


def _scale_input_channels(conv, channels, factor):
    """Multiply the weights that `conv` applies to input `channels` by `factor` (any `groups`)."""
    per_group_in = conv.in_channels // conv.groups
    per_group_out = conv.out_channels // conv.groups
    with torch.no_grad():
        for c in range(channels.start, channels.stop):
            g = c // per_group_in
            conv.weight[g * per_group_out:(g + 1) * per_group_out, c % per_group_in] *= factor


def _flat(output):
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    return [t for o in (output if isinstance(output, (list, tuple)) else []) for t in _flat(o)]


def _same(a, b):
    a, b = _flat(a), _flat(b)
    return len(a) == len(b) and all(
        x.shape == y.shape and torch.allclose(x, y, rtol=1e-4, atol=1e-5 * max(float(y.abs().max()), 1e-6))
        for x, y in zip(a, b)
    )


def _readers(layers, index):
    """(reader index, input position) of every layer that reads layer `index`."""
    return [(k, p) for k in range(index + 1, len(layers)) for p, s in enumerate(layer_sources(layers[k], k)) if s == index]


def _absorb(model, inputs, index, channels, factor, done):
    """Make every reader of layer `index` (channels `channels` of its output) absorb `factor`; return the convolutions
    changed (with their old weights in `done`), or raise ValueError naming a reader that cannot."""
    from ultralytics.nn.modules import Concat

    layers = model.model
    for k, position in _readers(layers, index):
        reader = layers[k]
        if isinstance(reader, Concat) and reader.d == 1:
            offset = sum(t.shape[1] for t in inputs[k][:position])
            _absorb(model, inputs, k, slice(channels.start + offset, channels.stop + offset), factor, done)
            continue
        if isinstance(reader, _COMMUTING):
            _absorb(model, inputs, k, channels, factor, done)
            continue
        convs, before = _input_convs(reader, inputs[k], position)
        if not convs:
            raise ValueError(f"model.{k} ({type(reader).__name__}) reads it other than through a convolution")
        for conv in convs:
            done.setdefault(conv, conv.weight.detach().clone())
            _scale_input_channels(conv, channels, factor)
        with torch.no_grad():
            after = reader(_with_scaled(inputs[k], position, channels, 1.0 / factor))
        if not _same(after, before):
            raise ValueError(f"model.{k} ({type(reader).__name__}) cannot absorb a constant factor on its input")


def start_new_layers(model: nn.Module, new_keys: set[str]) -> StartReport:
    """Give the attention layers of `model` whose tensors did not come from the checkpoint the start `start_choice()`
    names: the function-preserving start (module docstring), in place, or the published one (they keep it).

    Args:
        model (ultralytics.nn.tasks.BaseModel): A model a checkpoint was just loaded into.
        new_keys (set[str]): State-dict keys of `model` that the checkpoint did not provide.

    Returns:
        (StartReport): What was done; empty when no attention layer is new or the start is the published one.

    Raises:
        ValueError: If a new attention layer exists and `EMA_YOLO_START` is invalid (`start_choice`).
    """
    attention, report = ATTENTION_TYPES, StartReport()
    names = {m: n for n, m in model.named_modules()}

    def new(module):
        keys = [f"{names[module]}.{k}" for k in module.state_dict()]
        return bool(keys) and all(k in new_keys for k in keys)

    # blocks with attention inside (`csp_attn.AttnBottleneck`, which imports Ultralytics: known by its method here)
    blocks = [b for b in model.modules() if hasattr(b, "preserving_start_") and new(b.attn)]
    rows = [j for j, layer in enumerate(model.model) if isinstance(layer, attention) and new(layer)]
    if not (blocks or rows) or start_choice() == "published":
        return report
    for block in blocks:
        block.preserving_start_()
    report.blocks = len(blocks)
    training = model.training
    model.eval()  # the probe runs must leave BatchNorm's running statistics untouched
    try:
        _start_rows(model, rows, names, report)
    finally:
        model.train(training)
    return report


def _start_rows(model, rows, names, report):
    """The function-preserving start of attention rows `rows` (layer indices), recorded in `report`."""
    inputs = _layer_inputs(model) if rows else {}
    for j in rows:
        layer, done = model.model[j], {}
        published = {k: v.clone() for k, v in layer.state_dict().items()}
        gate = layer.constant_gate_()
        try:
            _absorb(model, inputs, j, slice(0, inputs[j].shape[1]), 1.0 / gate, done)
        except ValueError as e:
            with torch.no_grad():
                for conv, weight in done.items():
                    conv.weight.copy_(weight)
            layer.load_state_dict(published)
            report.published.append((j, str(e)))
            continue
        report.rows.append((j, gate))
        report.readers += [names[conv] for conv in done]
