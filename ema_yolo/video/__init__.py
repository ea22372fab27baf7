"""Video inference with OpenCV: `ema-yolo video` and `annotate_video()`."""

from .annotate import VideoError, VideoOptions, annotate_video

__all__ = ("VideoError", "VideoOptions", "annotate_video")
