"""A model's detections on a dataset split, from Ultralytics' validator, in the format `yolo val save_json=True`
writes (`protocols` reads it)."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..models import open_model
from .protocols import match_classes

if TYPE_CHECKING:
    from ultralytics import YOLO

    from .protocols import GroundTruth

__all__ = ("model_predictions",)


@contextlib.contextmanager
def _quiet_ultralytics():
    """Keep stdout for our own output (`--json -`), and of Ultralytics' validator only its progress bar (on stderr).

    Its log lines are not this command's: its own metrics table, "Results saved to" a folder deleted afterwards, its
    label warnings (`load_ground_truth` prints them) and "Skipping labels" (classes are matched by name here). A
    filter, not the log level, drops them: the level also switches its progress bar off.
    """
    import logging

    from ultralytics.utils import LOGGER

    def errors_only(record):
        return record.levelno >= logging.ERROR

    LOGGER.addFilter(errors_only)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        LOGGER.removeFilter(errors_only)


def model_predictions(model: str | Path | YOLO, data: str | Path, protocol: str = "coco", imgsz: int = 640,
                      split: str = "val", device: str | None = None, batch: int = 16,
                      gt: GroundTruth | None = None) -> list[dict]:
    """Run `model` over the split with Ultralytics' validator and return its `save_json` predictions ([] for none).

    With `gt` (the split's `GroundTruth`), the model's classes are matched to the dataset's by name
    (`protocols.match_classes`): detections get the dataset's category ids, those of classes the dataset lacks are
    left out.

    Args:
        model (str | Path | ultralytics.YOLO): Checkpoint, model YAML, exported model, or a loaded model.

    Raises:
        EvalError: If no class name of the model is one of the dataset's.
        ema_yolo.models.ModelError: If the model cannot be loaded.
    """
    from ultralytics import YOLO
    from ultralytics.data.converter import coco80_to_coco91_class

    net = model if isinstance(model, YOLO) else open_model(model)
    mapping = match_classes(net.names, gt)[0] if gt is not None else None
    base = net._smart_load("validator")

    class Validator(base):
        def eval_json(self, stats):  # scored by our protocols: no faster-coco-eval (nor its pip AutoUpdate)
            return stats

    with tempfile.TemporaryDirectory() as tmp, _quiet_ultralytics():
        net.val(
            validator=Validator, data=str(data), split=split, imgsz=imgsz, batch=batch, device=device, save_json=True,
            plots=False, conf=0.001, max_det=500 if protocol == "visdrone" else 300, project=tmp, name="val",
            verbose=False,
        )
        saved = Path(tmp) / "val" / "predictions.json"
        predictions = json.loads(saved.read_text()) if saved.is_file() else []  # none written for no detection
    if mapping is not None:  # the validator's class_map: model class index -> category_id it wrote
        class_map = coco80_to_coco91_class() if gt.category_ids == coco80_to_coco91_class() else range(1, len(net.names) + 1)
        model_class = {category: i for i, category in enumerate(class_map)}
        predictions = [{**p, "category_id": mapping[model_class[p["category_id"]]]} for p in predictions
                       if model_class[p["category_id"]] in mapping]
    return predictions
