"""`freeze=N` in a model with attention: the stock model's first N layers, never the new attention.

Ultralytics turns an integer `freeze` into the parameter-name prefixes `model.0.` ... `model.{N-1}.` of the model being
trained. In a model with attention rows those indices are shifted, so `freeze=10` on yolov8n-ema froze the EMA at
`model.7` and left the stock SPPF (`model.11`) trainable. Here `freeze=N` means the stock model's layers 0..N-1: the
stock model is the YAML with its attention rows removed, so its layer k is this model's k-th non-attention layer (the
alignment `transfer.align_layers` finds for a stock checkpoint). Inside those layers, attention modules (the attention
in an in-block `C2fEMA` bottleneck) stay trainable. An explicit list of indices keeps Ultralytics' meaning: this
model's own layers.

`install` wraps `BaseTrainer.setup_model` (after which the model exists) to hand the trainer's freeze step the
translated prefixes, and `BaseTrainer._setup_train` to give `args.freeze` its value back when the step is done, so
`args.yaml`, checkpoints and the DDP launcher keep the user's `freeze=N`.
"""

from __future__ import annotations

import functools
from types import ModuleType

from torch import nn

from ..nn.registry import ATTENTION_TYPES

__all__ = ("install", "stock_freeze")


def _stock_parts(module, name, attention):
    """Names (relative to the model's `model`) of the largest submodules of `module` that hold no attention."""
    if not any(isinstance(m, attention) for m in module.modules()):
        return [name]
    return [part for child_name, child in module.named_children() if not isinstance(child, attention)
            for part in _stock_parts(child, f"{name}.{child_name}", attention)]  # fmt: skip


def _ranges(indices):
    """'model.0-6, 8-9, 11' for [0, ..., 6, 8, 9, 11]."""
    spans = []
    for j in indices:
        if spans and j == spans[-1][1] + 1:
            spans[-1][1] = j
        else:
            spans.append([j, j])
    return "model." + ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in spans)


def stock_freeze(model: nn.Module, n: int) -> tuple[list[str], str] | None:
    """Translate `freeze=n` for `model` into Ultralytics' freeze entries, or None where it means what it says.

    Args:
        model (ultralytics.nn.tasks.BaseModel): The model being trained (layers in `model.model`).
        n (int): The user's `freeze`: the stock model's first `n` layers.

    Returns:
        (tuple[list[str], str] | None): Entries `e` for which Ultralytics freezes the parameters whose names contain
            `model.{e}.` (this model's layer indices, or sub-module paths where a layer holds attention), and one line
            saying what is frozen; None if `model` holds no attention (the stock meaning is right).

    Example:
        >>> from ultralytics.nn.tasks import DetectionModel
        >>> stock_freeze(DetectionModel("yolov8n-ema.yaml", verbose=False), 10)[0]
        ['0', '1', '2', '3', '4', '5', '6', '8', '9', '11']
    """
    attention = ATTENTION_TYPES
    layers = list(model.model)
    if not any(isinstance(m, attention) for m in model.modules()):
        return None
    stock = [j for j, layer in enumerate(layers) if not isinstance(layer, attention)][:n]
    entries = [part for j in stock for part in _stock_parts(layers[j], str(j), attention)]
    inside = [j for j, layer in enumerate(layers) if isinstance(layer, attention) and stock and j < stock[-1]]
    inside += [j for j in stock if str(j) not in entries]  # attention inside the layer: its stock parts are frozen
    line = f"freeze={n}: froze the stock model's layers 0-{n - 1}, which are this model's {_ranges(stock)}"
    line += f"; the attention in {_ranges(sorted(inside))} stays trainable" if inside else ""
    return entries, line


def install(trainer_module: ModuleType) -> None:
    """Wrap `BaseTrainer.setup_model` and `BaseTrainer._setup_train` (idempotent).

    Args:
        trainer_module (module): `ultralytics.engine.trainer`.
    """
    trainer_cls = trainer_module.BaseTrainer
    if hasattr(trainer_cls.setup_model, "ema_yolo_wrapped"):
        return
    setup_model, setup_train = trainer_cls.setup_model, trainer_cls._setup_train

    @functools.wraps(setup_model)
    def setup_model_wrapper(self, *args, **kwargs):
        result = setup_model(self, *args, **kwargs)
        freeze = self.args.freeze
        if isinstance(freeze, int) and not isinstance(freeze, bool) and freeze > 0:
            translated = stock_freeze(self.model, freeze)
            if translated:
                self._ema_yolo_freeze = freeze
                self.args.freeze, line = translated
                trainer_module.LOGGER.info(line)
        return result

    @functools.wraps(setup_train)
    def setup_train_wrapper(self, *args, **kwargs):
        try:
            return setup_train(self, *args, **kwargs)
        finally:
            if hasattr(self, "_ema_yolo_freeze"):
                self.args.freeze = self.__dict__.pop("_ema_yolo_freeze")

    setup_model_wrapper.ema_yolo_wrapped = setup_model
    setup_train_wrapper.ema_yolo_wrapped = setup_train
    trainer_cls.setup_model, trainer_cls._setup_train = setup_model_wrapper, setup_train_wrapper
