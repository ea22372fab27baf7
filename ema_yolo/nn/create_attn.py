"""Attention layers by name: the one place that maps a name to a class."""

from .cbam import CBAM
from .coord_attn import CA
from .ema import EMA
from .squeeze_excite import SE

__all__ = ("ATTENTION_LAYERS", "create_attn", "get_attn")

ATTENTION_LAYERS = {"ema": EMA, "cbam": CBAM, "ca": CA, "se": SE}


def get_attn(name):
    """Return the attention class called `name` (case-insensitive: ema, cbam, ca, se)."""
    try:
        return ATTENTION_LAYERS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown attention layer {name!r}; choose from {', '.join(ATTENTION_LAYERS)}") from None


def create_attn(name, channels, **kwargs):
    """Build attention layer `name` for `channels` input channels.

    Example:
        >>> create_attn("ema", 64, factor=16)
        EMA(channels=64, groups=16)
    """
    return get_attn(name)(channels, **kwargs)
