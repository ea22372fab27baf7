"""Run a detector over a video and write an annotated video, with decode, inference and encode overlapped.

Decoding and encoding run in their own threads around the inference loop (OpenCV releases the GIL while it decodes
and encodes), so the slowest stage sets the pace. Frames are batched for inference (tracking needs one at a time).
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

import csv
import json
import queue
import sys
import threading
import time
from pathlib import Path

import cv2

from ..models import open_model

__all__ = ("VideoError", "annotate_video", "open_source")

_DONE = object()


class VideoError(Exception):
    """A source or output problem (the message names it)."""


def _timestamp(cap, index, fps):
    """Seconds of the frame `cap` just decoded: its timestamp, or `index / fps` where the backend has none (cameras)."""
    ms = cap.get(cv2.CAP_PROP_POS_MSEC)
    return ms / 1000 if ms > 0 or index == 0 else index / fps


def open_source(source):
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


def _open_writer(output, fps, size):
    """Open the output writer on a temporary path; return (writer, temporary path, final path)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    mp4 = ("mp4v", output.suffix if output.suffix.lower() in {".mp4", ".mov", ".m4v"} else ".mp4")
    candidates = [("MJPG", ".avi"), mp4] if output.suffix.lower() == ".avi" else [mp4, ("MJPG", ".avi")]
    for fourcc, suffix in candidates:
        final = output.with_suffix(suffix)
        tmp = final.with_name(f".{final.stem}.partial{suffix}")
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if writer.isOpened():
            return writer, tmp, final
        writer.release()
        tmp.unlink(missing_ok=True)
    raise VideoError(f"{output}: OpenCV cannot open a video writer here (tried mp4v/.mp4 and MJPG/.avi)")


class _DetectionLog:
    """Per-frame detections as CSV or JSON lines (by the file's suffix)."""

    FIELDS = ("frame", "time_s", "class_id", "class_name", "score", "x1", "y1", "x2", "y2", "track_id")

    def __init__(self, path):
        self.path = Path(path)
        self.file = open(self.path, "w", newline="")
        self.jsonl = self.path.suffix.lower() in {".jsonl", ".json", ".ndjson"}
        if not self.jsonl:
            self.writer = csv.writer(self.file)
            self.writer.writerow(self.FIELDS)

    def write(self, frame, time_s, result):
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


def annotate_video(model, source, output, imgsz=640, conf=0.25, iou=0.7, device=None, classes=None, vid_stride=1,
                   track=False, tracker="bytetrack.yaml", save_detections=None, show=False, batch=4, progress=True):
    """Detect (or track) objects in every `vid_stride`-th frame of `source` and write the annotated video to `output`.

    Args:
        model (str | Path | ultralytics.YOLO): .pt checkpoint, model YAML, exported model (ONNX, TorchScript) or model.
        source (str | int): Video file, camera index, or stream URL.
        output (str | Path): Annotated video path (.mp4; see the module docstring for the fallback).
        vid_stride (int): Process every k-th decoded frame; the output frame rate is the source's divided by k.
        track (bool): Track with Ultralytics' tracker (`tracker`), adding track ids.
        save_detections (str | Path, optional): Per-frame detections, CSV or JSON lines (.jsonl).
        batch (int): Frames per inference call (1 when tracking or for fixed-batch exported models).

    Returns:
        (dict): frames decoded, frames written, output path, seconds, frames/s, and whether it was interrupted.

    Raises:
        VideoError: For a missing, unreadable or undecodable source, or no usable writer; nothing is left behind.
        ema_yolo.models.ModelError: For a missing or unloadable model.
    """
    from ultralytics import YOLO
    from ultralytics.utils import TQDM

    if vid_stride < 1:
        raise VideoError(f"vid_stride must be >= 1, got {vid_stride}")
    if track:
        try:
            import lap  # noqa: F401 - Ultralytics' trackers need it; it would try to pip-install it otherwise
        except ImportError:
            raise VideoError("--track needs the 'lap' package: pip install 'ema-yolo[track]'") from None
    net = model if isinstance(model, YOLO) else open_model(model)
    if track or Path(str(getattr(net, "model_name", "") or "")).suffix not in {"", ".pt", ".yaml", ".yml"}:
        batch = 1  # trackers are sequential; exported models usually have a fixed batch of 1
    cap, first = open_source(source)
    src_fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    src_fps = src_fps if 0 < src_fps < 1000 else 30.0
    reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    height, width = first.shape[:2]
    out_fps = src_fps / vid_stride
    writer, tmp, final = _open_writer(output, out_fps, (width, height))
    log = _DetectionLog(save_detections) if save_detections else None
    frames_in, frames_out = queue.Queue(maxsize=2 * batch + 2), queue.Queue(maxsize=2 * batch + 2)
    stop = threading.Event()
    counts = {"decoded": 0, "written": 0}
    errors = []

    def decode():
        frame, index, seconds = first, 0, _timestamp(cap, 0, src_fps)
        try:
            while frame is not None and not stop.is_set():
                counts["decoded"] += 1
                if index % vid_stride == 0:
                    frames_in.put((index, seconds, frame))
                ok, frame = cap.read()
                frame = frame if ok else None
                index += 1
                seconds = _timestamp(cap, index, src_fps)
        finally:
            frames_in.put(_DONE)

    def encode():
        started, shown = time.perf_counter(), 0
        while (item := frames_out.get()) is not _DONE:
            index, seconds, result = item
            image = result.plot()
            shown += 1
            fps = shown / max(time.perf_counter() - started, 1e-9)
            cv2.putText(image, f"{fps:.1f} FPS", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 0), 4, cv2.LINE_AA)
            cv2.putText(image, f"{fps:.1f} FPS", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2, cv2.LINE_AA)
            writer.write(image)
            counts["written"] += 1
            if log:
                log.write(index, seconds, result)
            if show:
                cv2.imshow("ema-yolo", image)
                cv2.waitKey(1)

    def predict(frames):
        kwargs = dict(imgsz=imgsz, conf=conf, iou=iou, device=device, classes=classes, verbose=False)
        if track:
            return net.track(frames[0], persist=True, tracker=tracker, **kwargs)
        return net.predict(frames, **kwargs)

    decoder, encoder = threading.Thread(target=decode, daemon=True), threading.Thread(target=encode, daemon=True)
    started, interrupted = time.perf_counter(), False
    decoder.start(), encoder.start()
    expected = -(-reported // vid_stride) if reported > 0 else None
    bar = TQDM(total=expected, desc="video", unit="frame", disable=not progress, file=sys.stderr)  # stdout: the summary
    try:
        done = False
        while not done:
            pending = []
            while len(pending) < batch:
                item = frames_in.get()
                if item is _DONE:
                    done = True
                    break
                pending.append(item)
            if pending:
                for (index, seconds, _), result in zip(pending, predict([f for *_, f in pending])):
                    frames_out.put((index, seconds, result))
                bar.update(len(pending))
    except KeyboardInterrupt:
        interrupted = True
    except Exception as e:  # noqa: BLE001 - any inference failure: finalise and re-raise below
        errors.append(e)
    finally:
        stop.set()
        while decoder.is_alive():  # unblock the decoder if it waits on a full queue
            try:
                frames_in.get_nowait()
            except queue.Empty:
                decoder.join(0.05)
        frames_out.put(_DONE)
        encoder.join()
        bar.close()
        cap.release()
        writer.release()
        if log:
            log.close()
        if show:
            cv2.destroyAllWindows()
    if errors or counts["written"] == 0:
        tmp.unlink(missing_ok=True)
        if errors:
            raise errors[0]
        raise VideoError(f"{source}: no frame was written")
    tmp.replace(final)
    seconds = time.perf_counter() - started
    return {"source": str(source), "output": str(final), "frames_decoded": counts["decoded"],
            "frames_written": counts["written"], "reported_frame_count": reported, "fps_in": round(src_fps, 3),
            "fps_out": round(out_fps, 3), "seconds": round(seconds, 2),
            "processing_fps": round(counts["written"] / max(seconds, 1e-9), 2), "interrupted": interrupted}
