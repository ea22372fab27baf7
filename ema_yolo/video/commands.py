"""`ema-yolo video`: annotate a video (file, camera index or stream URL) with a detector."""

from __future__ import annotations

import argparse
import json
import sys

from ..cli_format import HelpFormatter
from ..models import ModelError
from .annotate import VideoError, VideoOptions, annotate_video

__all__ = ("main",)


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(prog="ema-yolo video", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help=".pt checkpoint, model YAML, or exported model (.onnx, .torchscript)")
    parser.add_argument("--source", required=True, help="video file, camera index (0) or stream URL (rtsp://, http://)")
    parser.add_argument("--output", required=True, help="annotated video (.mp4)")
    parser.add_argument("--imgsz", type=int, default=640, help="inference size")
    parser.add_argument("--conf", type=float, default=0.25, help="confidence threshold")
    parser.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold")
    parser.add_argument("--device", default=None, help="e.g. cpu or 0 (default: Ultralytics' choice)")
    parser.add_argument("--classes", type=int, nargs="+", help="keep only these class indices")
    parser.add_argument("--vid-stride", type=int, default=1, help="process every k-th frame")
    parser.add_argument("--batch", type=int, default=4, help="frames per inference call")
    parser.add_argument("--track", action="store_true", help="track objects (needs ema-yolo[track])")
    parser.add_argument("--tracker", default="bytetrack.yaml", help="bytetrack.yaml or botsort.yaml")
    parser.add_argument("--save-detections", help="per-frame detections: .csv or .jsonl")
    parser.add_argument("--show", action="store_true", help="also show the frames in a window")
    args = parser.parse_args(argv)
    try:
        options = VideoOptions(
            imgsz=args.imgsz, conf=args.conf, iou=args.iou, device=args.device, classes=args.classes,
            vid_stride=args.vid_stride, track=args.track, tracker=args.tracker, save_detections=args.save_detections,
            show=args.show, batch=args.batch,
        )
        summary = annotate_video(args.model, args.source, args.output, options)
    except (VideoError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    if summary["interrupted"]:
        print(f"interrupted: wrote {summary['frames_written']} frames to {summary['output']}", file=sys.stderr)
        return 130
    print(f"{summary['frames_written']} frames written to {summary['output']} at {summary['processing_fps']} frames/s",
          file=sys.stderr)
    return 0
