"""Video inference with OpenCV: `ema-yolo video` and `annotate_video()`."""

from .annotate import VideoError, annotate_video

__all__ = ("VideoError", "annotate_video")
