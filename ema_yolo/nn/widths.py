"""The hidden width of an attention layer's bottleneck."""

__all__ = ("reduced_width",)


def reduced_width(channels: int, reduction: int, minimum: int = 8) -> int:
    """Return `max(minimum, channels // reduction)`: the bottleneck width of SE, CBAM's channel MLP and CA.

    The floor of 8 keeps narrow layers from a 1- or 2-channel bottleneck (as Coordinate Attention's reference code,
    `max(8, inp // reduction)`; SE and CBAM use it here too, so the three size alike).

    Example:
        >>> reduced_width(256, 16), reduced_width(64, 32)
        (16, 8)
    """
    return max(minimum, channels // reduction)
