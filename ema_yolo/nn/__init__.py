"""Attention layers for YOLO models. Every layer takes the input channel count as its first argument."""

from .cbam import CBAM
from .coord_attn import CA
from .eca import ECA
from .ema import EMA, ema_groups
from .ema_reference import EMAReference
from .graph_args import GraphArgs
from .registry import ATTENTION_LAYERS, ATTENTION_TYPES, REGISTRY, AttentionLayer, create_attn, get_attn
from .squeeze_excite import SE

__all__ = (
    "ATTENTION_LAYERS", "ATTENTION_TYPES", "CA", "CBAM", "ECA", "EMA", "REGISTRY", "SE", "AttentionLayer",
    "EMAReference", "GraphArgs", "create_attn", "ema_groups", "get_attn",
)  # fmt: skip
