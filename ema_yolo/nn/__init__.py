"""Attention layers for YOLO models. Every layer takes the input channel count as its first argument."""

from .cbam import CBAM
from .coord_attn import CA
from .create_attn import ATTENTION_LAYERS, create_attn, get_attn
from .ema import EMA, ema_groups
from .ema_reference import EMAReference
from .graph_args import GraphArgs
from .squeeze_excite import SE

__all__ = (
    "ATTENTION_LAYERS", "CA", "CBAM", "EMA", "SE", "EMAReference", "GraphArgs", "create_attn", "ema_groups", "get_attn",
)
