"""Open the model a user names on a command line: a checkpoint, a model YAML (bare names resolve from ema-yolo's
`cfg/`), or an exported model, with a one-line error naming it instead of a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ultralytics import YOLO

__all__ = ("ModelError", "open_model")


class ModelError(Exception):
    """A model file that is missing or cannot be loaded; the message names it."""


def open_model(spec: str | Path) -> YOLO:
    """Return `ultralytics.YOLO(spec)`.

    Args:
        spec (str | Path): Checkpoint (.pt), model YAML or exported model.

    Returns:
        (ultralytics.YOLO): The loaded model.

    Raises:
        ModelError: If a checkpoint path does not exist (checked first, so Ultralytics does not try to download a
            release asset of that name) or Ultralytics cannot load the file.

    Example:
        >>> open_model("yolov8n-ema.yaml").task
        'detect'
    """
    from ultralytics import YOLO

    if Path(spec).suffix == ".pt" and not Path(spec).is_file():
        raise ModelError(f"{spec}: no such model file")
    try:
        return YOLO(str(spec))
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file: say which and why, in one line
        reason = (str(e).strip().splitlines() or [""])[0]
        raise ModelError(f"{spec}: cannot load model ({type(e).__name__}: {reason})") from None
