"""Export checks: every Ultralytics export format of an EMA model, compared with PyTorch (`ema-yolo check-exports`,
in `ema_yolo.export.check`)."""

from .compare import head_output, load_images, match_boxes, raw_error

__all__ = ("head_output", "load_images", "match_boxes", "raw_error")
