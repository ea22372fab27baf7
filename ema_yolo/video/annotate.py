"""Run a detector over a video and write an annotated video, with decode, inference and encode overlapped.

A pipeline of small pieces, with its options in one dataclass (`VideoOptions`): a `FrameReader` decodes in its own
thread, the inference loop (`Detector`) batches frames, and an encoder thread hands each result to its sinks: the
annotated video (`AnnotatedVideo`), the detections file (`DetectionLog`) and a window (`Window`). OpenCV releases the
GIL while it decodes and encodes, so the slowest stage sets the pace. Frames are batched for inference (tracking needs one at a time).
Every decoded frame is accounted for: the loop ends when OpenCV stops returning frames, whatever
`CAP_PROP_FRAME_COUNT` claimed. The output is written to a temporary name and renamed only once finalised; Ctrl-C or
a dropped stream finalises what was written so far.

Time: `time_s` in the detections file is the decoder's timestamp of the frame (OpenCV's `CAP_PROP_POS_MSEC`, the
container's presentation time), true on variable-frame-rate files. The output is constant-rate: every written frame
at the source's average rate (OpenCV's `CAP_PROP_FPS`, FFmpeg's `avg_frame_rate`: frames / duration) divided by the
stride, so the output lasts as long as the source, to within one frame.

Container: MPEG-4 Part 2 ('mp4v') in .mp4, which OpenCV's bundled FFmpeg writes and common players open; if this
OpenCV cannot open that writer, Motion-JPEG ('MJPG') in .avi next to the requested name. Asking for .avi gives MJPG.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import queue
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ..models import open_model

if TYPE_CHECKING:
    from ultralytics import YOLO

__all__ = ("VideoError", "VideoOptions", "annotate_video", "open_source")

DONE = object()  # the end of a stage's queue


class VideoError(Exception):
    """A source or output problem (the message names it)."""


def _timestamp(cap, index, fps):
    """Seconds of the frame `cap` just decoded: its timestamp, or `index / fps` where the backend has none (cameras)."""
    ms = cap.get(cv2.CAP_PROP_POS_MSEC)
    return ms / 1000 if ms > 0 or index == 0 else index / fps


def open_source(source: str | int) -> tuple[cv2.VideoCapture, np.ndarray]:
    """Open a file, a camera index ('0') or a stream URL with OpenCV; raise VideoError if it yields no frame.

    Returns:
        (tuple): The `cv2.VideoCapture` and its first frame (decoded).
    """
    text = str(source)
    is_stream = "://" in text
    if text.isdigit():
        cap = cv2.VideoCapture(int(text))
    else:
        if not is_stream and not Path(text).is_file():
            raise VideoError(f"{text}: no such file")
        cap = cv2.VideoCapture(text)
    if not cap.isOpened():
        raise VideoError(f"{text}: OpenCV cannot open this source (unknown container or codec?)")
    ok, first = cap.read()
    if not ok or first is None:
        cap.release()
        raise VideoError(f"{text}: no frame could be decoded (corrupt file or unsupported codec)")
    return cap, first


class DetectionLog:
    """Per-frame detections as CSV or JSON lines (by the file's suffix)."""

    FIELDS = ("frame", "time_s", "class_id", "class_name", "score", "x1", "y1", "x2", "y2", "track_id")

    def __init__(self, path):
        self.path = Path(path)
        self.file = open(self.path, "w", newline="")
        self.jsonl = self.path.suffix.lower() in {".jsonl", ".json", ".ndjson"}
        if not self.jsonl:
            self.writer = csv.writer(self.file)
            self.writer.writerow(self.FIELDS)

    def write(self, frame, time_s, result, image=None):
        """Log `result`'s boxes for frame `frame` at `time_s` seconds (`image`, the drawn frame, is not used)."""
        boxes = result.boxes
        ids = boxes.id.int().tolist() if boxes.id is not None else [None] * len(boxes)
        for (x1, y1, x2, y2), cls, score, track in zip(boxes.xyxy.tolist(), boxes.cls.int().tolist(), boxes.conf.tolist(), ids):
            row = (frame, round(time_s, 4), cls, result.names[cls], round(score, 4), *(round(v, 1) for v in (x1, y1, x2, y2)), track)
            if self.jsonl:
                self.file.write(json.dumps(dict(zip(self.FIELDS, row))) + "\n")
            else:
                self.writer.writerow(row)

    def close(self):
        self.file.close()


@dataclasses.dataclass
class VideoOptions:
    """What `annotate_video` does besides its model, source and output.

    Attributes:
        imgsz, conf, iou, device, classes: Ultralytics' predict arguments.
        vid_stride (int): Process every k-th decoded frame; the output frame rate is the source's divided by k.
        track (bool): Track with Ultralytics' tracker (`tracker`), adding track ids.
        tracker (str): Tracker YAML (bytetrack.yaml, botsort.yaml).
        save_detections (str | Path, optional): Per-frame detections, CSV or JSON lines (.jsonl).
        show (bool): Also show the annotated frames in a window.
        batch (int): Frames per inference call (1 when tracking or for fixed-batch exported models).
        progress (bool): A progress bar on stderr.
    """

    imgsz: int = 640
    conf: float = 0.25
    iou: float = 0.7
    device: str | None = None
    classes: list[int] | None = None
    vid_stride: int = 1
    track: bool = False
    tracker: str = "bytetrack.yaml"
    save_detections: str | Path | None = None
    show: bool = False
    batch: int = 4
    progress: bool = True


class FrameReader:
    """Decode `cap` in a thread into a bounded queue of (index, seconds, frame) for every `stride`-th frame.

    Every decoded frame is counted (`decoded`); the stream ends when OpenCV stops returning frames, whatever
    `CAP_PROP_FRAME_COUNT` claimed; `get()` then returns `DONE`.
    """

    def __init__(self, cap, first, fps, stride, size):
        self.cap, self.first, self.fps, self.stride = cap, first, fps, stride
        self.queue, self.stopped, self.decoded = queue.Queue(maxsize=size), threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        frame, index, seconds = self.first, 0, _timestamp(self.cap, 0, self.fps)
        try:
            while frame is not None and not self.stopped.is_set():
                self.decoded += 1
                if index % self.stride == 0:
                    self.queue.put((index, seconds, frame))
                ok, frame = self.cap.read()
                frame = frame if ok else None
                index += 1
                seconds = _timestamp(self.cap, index, self.fps)
        finally:
            self.queue.put(DONE)

    def start(self):
        self.thread.start()

    def get(self):
        """The next (index, seconds, frame), or `DONE`."""
        return self.queue.get()

    def close(self):
        """Stop decoding (unblocking the thread if it waits on a full queue) and release the source."""
        self.stopped.set()
        while self.thread.is_alive():
            try:
                self.queue.get_nowait()
            except queue.Empty:
                self.thread.join(0.05)
        self.cap.release()


class Detector:
    """Ultralytics inference on batches of frames (`predict`), or tracking one frame at a time."""

    def __init__(self, net, options):
        self.net, self.options = net, options
        self.kwargs = dict(imgsz=options.imgsz, conf=options.conf, iou=options.iou, device=options.device,
                           classes=options.classes, verbose=False)

    def __call__(self, frames):
        """Results for `frames` (a list of BGR images), in order."""
        if self.options.track:
            return self.net.track(frames[0], persist=True, tracker=self.options.tracker, **self.kwargs)
        return self.net.predict(frames, **self.kwargs)


class AnnotatedVideo:
    """The output video: each result drawn with the running frame rate, written to a temporary name that `finish`
    renames (or removes).

    Container: MPEG-4 Part 2 ('mp4v') in .mp4; if this OpenCV cannot open that writer, Motion-JPEG ('MJPG') in .avi
    next to the requested name. Asking for .avi gives MJPG.

    Raises:
        VideoError: If OpenCV cannot open either writer.
    """

    def __init__(self, output, fps, size):
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        mp4 = ("mp4v", output.suffix if output.suffix.lower() in {".mp4", ".mov", ".m4v"} else ".mp4")
        candidates = [("MJPG", ".avi"), mp4] if output.suffix.lower() == ".avi" else [mp4, ("MJPG", ".avi")]
        for fourcc, suffix in candidates:
            self.final = output.with_suffix(suffix)
            self.tmp = self.final.with_name(f".{self.final.stem}.partial{suffix}")
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*fourcc), fps, size)
            if self.writer.isOpened():
                break
            self.writer.release()
            self.tmp.unlink(missing_ok=True)
        else:
            raise VideoError(f"{output}: OpenCV cannot open a video writer here (tried mp4v/.mp4 and MJPG/.avi)")
        self.written, self.started = 0, time.perf_counter()

    def write(self, index, seconds, result, image):
        fps = (self.written + 1) / max(time.perf_counter() - self.started, 1e-9)
        cv2.putText(image, f"{fps:.1f} FPS", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.putText(image, f"{fps:.1f} FPS", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2, cv2.LINE_AA)
        self.writer.write(image)
        self.written += 1

    def close(self):
        self.writer.release()

    def finish(self, keep):
        """Rename the finalised file to its name (`keep`), or remove it."""
        if keep:
            self.tmp.replace(self.final)
        else:
            self.tmp.unlink(missing_ok=True)


class Window:
    """Show each annotated frame in an OpenCV window."""

    def write(self, index, seconds, result, image):
        cv2.imshow("ema-yolo", image)
        cv2.waitKey(1)

    def close(self):
        cv2.destroyAllWindows()


def _encode(results, sinks):
    """Hand each (index, seconds, result) of `results` to every sink, with its drawn image, until `DONE`."""
    while (item := results.get()) is not DONE:
        index, seconds, result = item
        image = result.plot()
        for sink in sinks:
            sink.write(index, seconds, result, image)


def annotate_video(model: str | Path | YOLO, source: str | int, output: str | Path, options: VideoOptions | None = None,
                   **fields: Any) -> dict:
    """Detect (or track) objects in every `vid_stride`-th frame of `source` and write the annotated video to `output`.

    Args:
        model (str | Path | ultralytics.YOLO): .pt checkpoint, model YAML, exported model (ONNX, TorchScript) or model.
        source (str | int): Video file, camera index, or stream URL.
        output (str | Path): Annotated video path (.mp4; see `AnnotatedVideo` for the fallback).
        options (VideoOptions, optional): What else to do; `fields` set single ones (`imgsz=320, batch=2`).

    Returns:
        (dict): frames decoded, frames written, output path, seconds, frames/s, and whether it was interrupted.

    Raises:
        VideoError: For a missing, unreadable or undecodable source, or no usable writer; nothing is left behind.
        ema_yolo.models.ModelError: For a missing or unloadable model.
    """
    from ultralytics import YOLO
    from ultralytics.utils import TQDM

    options = dataclasses.replace(options or VideoOptions(), **fields)
    if options.vid_stride < 1:
        raise VideoError(f"vid_stride must be >= 1, got {options.vid_stride}")
    if options.track:
        try:
            import lap  # noqa: F401 - Ultralytics' trackers need it; it would try to pip-install it otherwise
        except ImportError:
            raise VideoError("--track needs the 'lap' package: pip install 'ema-yolo[track]'") from None
    net = model if isinstance(model, YOLO) else open_model(model)
    batch = options.batch
    if options.track or Path(str(getattr(net, "model_name", "") or "")).suffix not in {"", ".pt", ".yaml", ".yml"}:
        batch = 1  # trackers are sequential; exported models usually have a fixed batch of 1
    cap, first = open_source(source)
    src_fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    src_fps = src_fps if 0 < src_fps < 1000 else 30.0
    reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    height, width = first.shape[:2]
    out_fps = src_fps / options.vid_stride
    video = AnnotatedVideo(output, out_fps, (width, height))
    sinks = [video, *([DetectionLog(options.save_detections)] if options.save_detections else []),
             *([Window()] if options.show else [])]
    reader = FrameReader(cap, first, src_fps, options.vid_stride, 2 * batch + 2)
    results = queue.Queue(maxsize=2 * batch + 2)
    encoder = threading.Thread(target=_encode, args=(results, sinks), daemon=True)
    detect, errors, interrupted = Detector(net, options), [], False
    started = time.perf_counter()
    reader.start(), encoder.start()
    expected = -(-reported // options.vid_stride) if reported > 0 else None
    bar = TQDM(total=expected, desc="video", unit="frame", disable=not options.progress, file=sys.stderr)  # stdout: the summary
    try:
        done = False
        while not done:
            pending = []
            while len(pending) < batch:
                item = reader.get()
                if item is DONE:
                    done = True
                    break
                pending.append(item)
            if pending:
                for (index, seconds, _), result in zip(pending, detect([f for *_, f in pending])):
                    results.put((index, seconds, result))
                bar.update(len(pending))
    except KeyboardInterrupt:
        interrupted = True
    except Exception as e:  # noqa: BLE001 - any inference failure: finalise and re-raise below
        errors.append(e)
    finally:
        reader.close()
        results.put(DONE)
        encoder.join()
        bar.close()
        for sink in sinks:
            sink.close()
    video.finish(keep=not errors and video.written > 0)
    if errors:
        raise errors[0]
    if video.written == 0:
        raise VideoError(f"{source}: no frame was written")
    seconds = time.perf_counter() - started
    return {"source": str(source), "output": str(video.final), "frames_decoded": reader.decoded,
            "frames_written": video.written, "reported_frame_count": reported, "fps_in": round(src_fps, 3),
            "fps_out": round(out_fps, 3), "seconds": round(seconds, 2),
            "processing_fps": round(video.written / max(seconds, 1e-9), 2), "interrupted": interrupted}
