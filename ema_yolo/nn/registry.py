"""Attention layers by name: the one table from which every consumer derives what it needs.

Each entry gives a layer's name in model YAMLs (`EMA`; lower case, `ema`, in compare variants, twin YAML names and
`create_attn`), its class, how `ema-yolo attention` reads its spatial weighting (None: it gates channels only), and
whether it has in-block twins (`C2fEMA`, `C3EMA`, `C3k2EMA`). Derived from it: the YAML layer names
(`ema_yolo.integration.ultralytics`), the in-block CSP classes (`ema_yolo.nn.csp_attn`), the twin model YAMLs by name
(`ema_yolo.integration.model_cfgs`: `yolov8s-cbam.yaml` from `yolov8-ema.yaml`), the attention-map readers
(`ema_yolo.viz.maps`), the function-preserving start of an inserted layer (each class's `constant_gate_()`, used by
`ema_yolo.integration.start` and `.freeze`) and the ablation variants (`ema_yolo.ablation.variants`).

A new layer is its module (input channels first, `metaclass=GraphArgsMeta`, a `constant_gate_()` that makes its gate
a constant and returns the gain) and one line in `REGISTRY`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .cbam import CBAM
from .coord_attn import CA
from .eca import ECA
from .ema import EMA
from .spatial_maps import MapReader, ca_map, cbam_map, ema_map
from .squeeze_excite import SE

__all__ = ("ATTENTION_LAYERS", "ATTENTION_TYPES", "REGISTRY", "AttentionLayer", "create_attn", "get_attn")


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer as the rest of ema-yolo sees it.

    Attributes:
        name (str): Its name in model YAML rows and in-block class names (`EMA` -> `C2fEMA`).
        cls (type): The layer class; its first constructor argument is the input channel count.
        spatial_map (MapReader | None): Reads its spatial weighting (`ema_yolo.nn.spatial_maps`); None when it gates
            channels only.
        in_block (bool): Whether `C2f<name>`, `C3<name>` and `C3k2<name>` exist (`ema_yolo.nn.csp_attn`).
    """

    name: str
    cls: type
    spatial_map: MapReader | None
    in_block: bool = True

    @property
    def key(self) -> str:
        """Lower-case name, as in compare variants and twin YAML names (`cbam`)."""
        return self.name.lower()


REGISTRY = {layer.key: layer for layer in (
    AttentionLayer("EMA", EMA, ema_map),  # Ouyang et al., ICASSP 2023
    AttentionLayer("CBAM", CBAM, cbam_map),  # Woo et al., ECCV 2018
    AttentionLayer("CA", CA, ca_map),  # Hou et al., CVPR 2021
    AttentionLayer("SE", SE, None),  # Hu et al., CVPR 2018
    AttentionLayer("ECA", ECA, None),  # Wang et al., CVPR 2020
)}  # fmt: skip
ATTENTION_LAYERS = {key: layer.cls for key, layer in REGISTRY.items()}  # lower-case name -> class
ATTENTION_TYPES = tuple(ATTENTION_LAYERS.values())  # for isinstance


def get_attn(name: str) -> type:
    """Return the attention class called `name` (case-insensitive: a key of `REGISTRY`)."""
    try:
        return ATTENTION_LAYERS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown attention layer {name!r}; choose from {', '.join(ATTENTION_LAYERS)}") from None


def create_attn(name: str, channels: int, **kwargs) -> nn.Module:
    """Build attention layer `name` for `channels` input channels.

    Example:
        >>> create_attn("ema", 64, factor=16)
        EMA(channels=64, groups=16)
    """
    return get_attn(name)(channels, **kwargs)
