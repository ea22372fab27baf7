"""ema-yolo: Efficient Multi-Scale Attention (EMA) for Ultralytics YOLO, without forking Ultralytics.

Importing this package is cheap (no torch, no ultralytics): it arranges for `register()` to run as soon as
`ultralytics.nn.tasks` is imported, or runs it now if that already happened. An installed `ema_yolo_autoload.pth`
does the same at interpreter start through the top-level `ema_yolo_autoload` module alone, so the stock `yolo`
command and DDP workers see EMA too.
"""

from ema_yolo_autoload import install_import_hook

__version__ = "0.1.0"
__all__ = ("__version__", "register")


def register():
    """Make EMA, CBAM, CA and SE usable by name in Ultralytics model YAMLs (idempotent)."""
    from .integration.ultralytics import register as _register

    _register()


install_import_hook()
