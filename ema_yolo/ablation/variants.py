"""The families and variants of the ablation harness, and the model YAML each pair names.

Variants: `baseline`, one per attention layer of the registry (`ema_yolo.nn.registry`: ema, cbam, ca, se, eca), and
`<block>-<layer>` with the layer inside every bottleneck of the family's CSP block (c2f-ema, c3k2-se, ...).
"""

from __future__ import annotations

from ..nn.registry import REGISTRY

__all__ = ("FAMILIES", "IN_BLOCK", "VARIANTS", "variant_cfg")

FAMILIES = ("yolov5", "yolov5-p2", "yolov8", "yolov8-p2", "yolo11", "yolo12", "yolo26", "yolo26-p2")
# family -> its CSP block, for attention inside it
IN_BLOCK = {"yolov5": "c3", "yolov8": "c2f", "yolo11": "c3k2", "yolo26": "c3k2"}
VARIANTS = ("baseline", *REGISTRY)
VARIANTS += tuple(f"{block}-{key}" for block in dict.fromkeys(IN_BLOCK.values()) for key, layer in REGISTRY.items()
                  if layer.in_block)


def variant_cfg(family: str, scale: str, variant: str) -> str:
    """Model YAML name, e.g. ('yolov8', 's', 'ema') -> 'yolov8s-ema.yaml', ('yolov5-p2', 'x', 'baseline') -> 'yolov5x-p2.yaml'.

    Variants `<block>-<attention>` (c2f-ema, c3k2-se, ...) put the attention inside every bottleneck of the family's
    CSP block (`IN_BLOCK`): ('yolov8', 's', 'c2f-ema') -> 'yolov8s-c2f-ema.yaml'.

    Raises:
        ValueError: For an unknown family, scale or variant, or an in-block variant of another family's block.
    """
    if family not in FAMILIES or variant not in VARIANTS or scale not in "nsmlx" or len(scale) != 1:
        raise ValueError(f"unknown family/scale/variant {family!r}/{scale!r}/{variant!r}")
    block = variant.partition("-")[0] if "-" in variant else None
    if block and IN_BLOCK.get(family) != block:
        needed = " or ".join(repr(f) for f, b in IN_BLOCK.items() if b == block)
        raise ValueError(f"variant {variant!r} needs family {needed}, not {family!r}")
    base, _, level = family.partition("-")
    name = f"{base}{scale}" + (f"-{level}" if level else "")
    return f"{name}.yaml" if variant == "baseline" else f"{name}-{variant}.yaml"
