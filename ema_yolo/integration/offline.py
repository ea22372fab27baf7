"""Run Ultralytics with no network request: its online check, plotting font and AMP check all reach out otherwise."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ("prepare_offline",)

FONTS = ("Arial.ttf", "Arial.Unicode.ttf")  # the names Ultralytics' plotting downloads when missing


def prepare_offline(config_dir: str | Path | None = None) -> Path:
    """Make the next `import ultralytics` offline; call before importing it.

    Sets `YOLO_OFFLINE=1` (gates Ultralytics' online check), optionally points `YOLO_CONFIG_DIR` at `config_dir`,
    and puts a local font under the names Ultralytics' plotting would otherwise download (DejaVu Sans, which ships
    with matplotlib) into that config folder. Training code must also pass `amp=False` or run on CPU, because the
    CUDA AMP check downloads a model.

    Args:
        config_dir (str | Path, optional): Ultralytics config folder to use; default: keep Ultralytics' own.

    Returns:
        (Path): The Ultralytics config folder holding the fonts.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    if config_dir is not None:
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    from matplotlib import font_manager
    from ultralytics.utils import USER_CONFIG_DIR

    font = Path(font_manager.findfont("DejaVu Sans", fallback_to_default=True))
    for name in FONTS:
        target = Path(USER_CONFIG_DIR) / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(font, target)
    return Path(USER_CONFIG_DIR)
