"""Ultralytics' CSP blocks with an attention layer inside every bottleneck: `C2fEMA`, `C3EMA`, `C3k2EMA` and twins.

Where public YOLOv8/YOLO11 forks put EMA "in C2f" varies: after the block's output convolution, on one half of its
split, or (the usual `Bottleneck_EMA` / `C2f_EMA` pattern) inside every bottleneck. These blocks take the last one,
on the residual branch: after the bottleneck's second convolution, before its shortcut add, where SE-ResNet (Hu et
al., CVPR 2018) puts channel attention. The identity path stays untouched, so a deep stack of blocks keeps its
gradient path, and every convolution keeps the stock block's name and shape, so stock checkpoints load unchanged
(the attention layers add tensors under `<bottleneck>.attn`, nothing else).

The blocks are subclasses of the stock ones: same arguments, same convolutions, plus the attention layers. In a
model YAML they are built by the stock parser with the stock width scaling, repeat count and C3k2 `c3k` rule
(`ema_yolo.integration.parse_model`), so `[-1, 3, C2fEMA, [128, True]]` replaces `[-1, 3, C2f, [128, True]]` at
every scale. This module imports Ultralytics; import it as `ema_yolo.nn.csp_attn`.
"""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules.block import C3, Bottleneck, C2f, C3k2

from .registry import REGISTRY, create_attn

STOCK_BLOCKS = (C2f, C3, C3k2)  # the Ultralytics CSP blocks that get in-block twins


class AttnBottleneck(Bottleneck):
    """Ultralytics' `Bottleneck` with an attention layer after its second convolution, before the shortcut add.

    Args:
        c1, c2, shortcut, g, k, e: As `ultralytics.nn.modules.block.Bottleneck`.
        attn (str): Attention layer name (a key of `ema_yolo.nn.registry.REGISTRY`), built for `c2` channels.

    Shape:
        Input (B, c1, H, W) -> output (B, c2, H, W).

    Example:
        >>> AttnBottleneck(64, 64, attn="ema")(torch.randn(1, 64, 8, 8)).shape
        torch.Size([1, 64, 8, 8])
    """

    gain = 1.0  # the attention output's factor: 1 (published) unless a function-preserving start set it

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, k: tuple[int, int] = (3, 3), e: float = 0.5,
                 attn: str = "ema"):
        super().__init__(c1, c2, shortcut, g, k, e)
        self.attn = create_attn(attn, c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual branch cv1 -> cv2 -> attention (times `gain`), then the stock shortcut add."""
        y = self.attn(self.cv2(self.cv1(x)))
        if self.gain != 1.0:  # a Python float: no op in the graph of a block trained from scratch
            y = y * self.gain
        return x + y if self.add else y

    def preserving_start_(self) -> float:
        """Start the attention as a constant gate g and set `gain` to 1 / g, so the block computes the stock
        bottleneck exactly; in place. The function-preserving start of a fine-tune from a stock checkpoint
        (`ema_yolo.integration.start`): the shortcut add cannot absorb the factor, so the block keeps it.

        Returns:
            (float): The gain set (2 for EMA, SE and ECA, 4 for CBAM and CA, whose two gates start at 0.5 each).
        """
        self.gain = 1.0 / self.attn.constant_gate_()
        return self.gain

    def get_extra_state(self) -> torch.Tensor:
        """`gain` travels in the state dict (as `<block>._extra_state`), so a fine-tuned block reloads exactly."""
        return torch.tensor(float(self.gain))

    def set_extra_state(self, state: torch.Tensor) -> None:
        """Restore `gain` from `get_extra_state`'s tensor."""
        self.gain = float(state)


def add_attention(module: nn.Module, attn: str) -> int:
    """Turn every stock `Bottleneck` inside `module` (at any depth, e.g. inside C3k2's C3k) into an `AttnBottleneck`.

    In place: each bottleneck keeps its convolutions (same objects, names and tensors) and gains `attn`, built for
    its output channels. The class is switched on the live object, as `torch.nn.utils.parametrize` does.

    Args:
        module (nn.Module): A block, e.g. a built `C2f`.
        attn (str): Attention layer name (a key of `REGISTRY`).

    Returns:
        (int): The number of bottlenecks that got attention.
    """
    bottlenecks = [m for m in module.modules() if type(m) is Bottleneck]  # listed first: the loop adds modules
    for b in bottlenecks:
        b.__class__ = AttnBottleneck
        b.attn = create_attn(attn, b.cv2.conv.out_channels)
    return len(bottlenecks)


class _AttnCSP:
    """Mixin: the stock block's constructor, then attention in every bottleneck. Subclasses set `stock`, `attention`."""

    stock = None  # the stock Ultralytics block this one extends
    attention = None  # attention layer name

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        add_attention(self, self.attention)

    @classmethod
    def from_stock(cls, block):
        """Give a built stock block (exactly `cls.stock`) attention in its bottlenecks, in place, and return it."""
        if type(block) is not cls.stock:
            raise TypeError(f"{cls.__name__}.from_stock needs a {cls.stock.__name__}, got {type(block).__name__}")
        block.__class__ = cls
        add_attention(block, cls.attention)
        return block


def _block(stock, attention):
    """The class `<stock><ATTENTION>`, e.g. (C2f, 'ema') -> C2fEMA, defined in this module (so checkpoints pickle)."""
    layer = REGISTRY[attention]
    name = f"{stock.__name__}{layer.name}"
    doc = (
        f"Ultralytics' `{stock.__name__}` with `{layer.cls.__name__}` in every bottleneck, after its "
        f"second convolution and before its shortcut add (module docstring: why there).\n\n"
        f"    Args: as `{stock.__name__}`; the stock convolutions are built exactly as there.\n\n"
        f"    Example:\n        >>> {name}(64, 64, 2)(torch.randn(1, 64, 16, 16)).shape\n"
        f"        torch.Size([1, 64, 16, 16])\n"
    )
    return type(name, (_AttnCSP, stock), {"__doc__": doc, "__module__": __name__, "stock": stock, "attention": attention})


CSP_ATTN_BLOCKS = {
    cls.__name__: cls
    for cls in (_block(stock, key) for stock in STOCK_BLOCKS for key, layer in REGISTRY.items() if layer.in_block)
}  # name in a model YAML (C2fEMA, C3CBAM, C3k2ECA, ...) -> class
globals().update(CSP_ATTN_BLOCKS)  # module attributes, so checkpoints pickle them by name

__all__ = ("CSP_ATTN_BLOCKS", "STOCK_BLOCKS", "AttnBottleneck", "add_attention", *CSP_ATTN_BLOCKS)

torch.serialization.add_safe_globals([AttnBottleneck, *CSP_ATTN_BLOCKS.values()])  # ULTRALYTICS_SAFE_LOAD=1 checkpoints
