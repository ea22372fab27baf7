"""`ema-yolo video` on clips generated here: frame accounting, stride, detections file, bad sources, interruption."""

import csv
import json

import cv2
import numpy as np
import pytest

from ema_yolo.cli import main as cli
from ema_yolo.video import VideoError, annotate_video


def _clip(path, frames=12, size=(96, 64), fps=10.0, fourcc="MJPG"):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    rng = np.random.default_rng(0)
    for i in range(frames):
        frame = rng.integers(0, 60, (size[1], size[0], 3), dtype=np.uint8)
        cv2.rectangle(frame, (5 + 3 * i, 10), (25 + 3 * i, 30), (255, 255, 255), -1)
        writer.write(frame)
    writer.release()
    return path


def _decode(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return frames, fps


@pytest.mark.parametrize("stride", [1, 3])
def test_frames_size_and_rate_preserved(trained_checkpoint, tmp_path, stride):
    clip = _clip(tmp_path / "in.avi", frames=11)
    summary = annotate_video(trained_checkpoint, clip, tmp_path / "out.mp4", imgsz=64, vid_stride=stride, progress=False)
    frames, fps = _decode(summary["output"])
    assert summary["frames_decoded"] == 11 and len(frames) == summary["frames_written"] == -(-11 // stride)
    assert frames[0].shape == (64, 96, 3) and fps == pytest.approx(10.0 / stride, rel=1e-3)
    assert not list(tmp_path.glob(".*partial*"))


def test_detections_file_matches_the_model(trained_checkpoint, tmp_path):
    from ultralytics import YOLO

    clip = _clip(tmp_path / "in.avi", frames=4)
    annotate_video(trained_checkpoint, clip, tmp_path / "out.mp4", imgsz=64, conf=0.001, batch=2,
                   save_detections=tmp_path / "det.csv", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "det.csv")))
    frames, _ = _decode(clip)
    model = YOLO(trained_checkpoint)
    for index, frame in enumerate(frames):
        expected = model.predict(frame, imgsz=64, conf=0.001, verbose=False)[0].boxes
        got = [r for r in rows if int(r["frame"]) == index]
        assert len(got) == len(expected)
        for row, box, score in zip(got, expected.xyxy.tolist(), expected.conf.tolist()):
            assert float(row["score"]) == pytest.approx(score, abs=1e-4)
            assert [float(row[k]) for k in ("x1", "y1", "x2", "y2")] == pytest.approx(box, abs=0.06)
            assert float(row["time_s"]) == pytest.approx(index / 10.0)


def test_yaml_and_onnx_models(trained_checkpoint, tmp_path):
    from ultralytics import YOLO

    clip = _clip(tmp_path / "in.avi", frames=5)
    onnx = YOLO(trained_checkpoint).export(format="onnx", imgsz=64, simplify=False)
    for i, model in enumerate(["yolov8n-ema.yaml", onnx]):
        summary = annotate_video(model, clip, tmp_path / f"out{i}.mp4", imgsz=64, progress=False)
        assert summary["frames_written"] == len(_decode(summary["output"])[0]) == 5


def test_bad_sources_fail_cleanly(tmp_path, capsys):
    assert cli(["video", "--model", "yolov8n-ema.yaml", "--source", str(tmp_path / "missing.mp4"), "--output", str(tmp_path / "o.mp4")]) == 1
    assert "missing.mp4: no such file" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    assert cli(["video", "--model", "yolov8n-ema.yaml", "--source", str(corrupt), "--output", str(tmp_path / "o.mp4")]) == 1
    assert "corrupt.mp4" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.mp4"]  # no output, complete-looking or partial


def test_interrupted_run_is_still_playable(trained_checkpoint, tmp_path, monkeypatch):
    from ultralytics import YOLO

    clip = _clip(tmp_path / "in.avi", frames=20)
    model = YOLO(trained_checkpoint)
    real_predict, calls = model.predict, []

    def predict(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(model, "predict", predict)
    summary = annotate_video(model, clip, tmp_path / "out.mp4", imgsz=64, batch=2, progress=False)
    assert summary["interrupted"] and summary["frames_written"] == 4  # two batches of two before Ctrl-C
    assert len(_decode(tmp_path / "out.mp4")[0]) == 4


def test_track_without_lap_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_lap(name, *args, **kwargs):
        if name == "lap":
            raise ImportError("no lap")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lap)
    with pytest.raises(VideoError, match=r"ema-yolo\[track\]"):
        annotate_video("yolov8n-ema.yaml", _clip(tmp_path / "in.avi", 2), tmp_path / "o.mp4", track=True)


def test_tracking_adds_track_ids(trained_checkpoint, tmp_path):
    # The 1-epoch test model is unsure of everything: a ByteTrack config that starts tracks at any confidence.
    from ultralytics.utils import ROOT

    stock = (ROOT / "cfg" / "trackers" / "bytetrack.yaml").read_text().splitlines()
    low = {"track_high_thresh": 0.001, "track_low_thresh": 0.0005, "new_track_thresh": 0.001}
    lines = [f"{line.split(':')[0]}: {low[line.split(':')[0]]}" if line.split(":")[0] in low else line for line in stock]
    (tmp_path / "tracker.yaml").write_text("\n".join(lines) + "\n")
    clip = _clip(tmp_path / "in.avi", frames=6)
    summary = annotate_video(trained_checkpoint, clip, tmp_path / "out.mp4", imgsz=64, conf=0.001, track=True,
                             tracker=str(tmp_path / "tracker.yaml"), save_detections=tmp_path / "det.jsonl", progress=False)
    assert summary["frames_written"] == 6
    import json

    rows = [json.loads(line) for line in (tmp_path / "det.jsonl").read_text().splitlines()]
    assert rows and all(isinstance(r["track_id"], int) for r in rows if r["track_id"] is not None)
    assert any(r["track_id"] is not None for r in rows)


def test_avi_output_is_honoured(tmp_path):
    clip = _clip(tmp_path / "in.avi", frames=3)
    summary = annotate_video("yolov8n-ema.yaml", clip, tmp_path / "out.avi", imgsz=64, progress=False)
    assert summary["output"] == str(tmp_path / "out.avi") and len(_decode(tmp_path / "out.avi")[0]) == 3


def test_stream_url_and_a_stream_that_drops(tmp_path):
    import functools
    import http.server
    import threading

    clip = _clip(tmp_path / "in.avi", frames=8)
    data = clip.read_bytes()
    (tmp_path / "dropped.avi").write_bytes(data[: int(len(data) * 0.6)])  # the connection dies mid-file
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        summary = annotate_video("yolov8n-ema.yaml", f"{url}/in.avi", tmp_path / "out.mp4", imgsz=64, progress=False)
        assert summary["frames_written"] == 8 == len(_decode(tmp_path / "out.mp4")[0])
        summary = annotate_video("yolov8n-ema.yaml", f"{url}/dropped.avi", tmp_path / "drop.mp4", imgsz=64, progress=False)
        assert 0 < summary["frames_written"] < 8 and summary["frames_written"] == summary["frames_decoded"]
        assert len(_decode(tmp_path / "drop.mp4")[0]) == summary["frames_written"]  # finalised, plays
    finally:
        server.shutdown()


def _vfr_clip(path, times, size=(96, 64)):
    """An MP4 whose frames carry the presentation times `times` (seconds), written with PyAV: variable frame rate."""
    import fractions

    import av

    time_base = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=20)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        stream.codec_context.time_base = time_base
        for i, t in enumerate(times):
            image = np.full((size[1], size[0], 3), 40, np.uint8)
            cv2.rectangle(image, (5 + 2 * i, 10), (30 + 2 * i, 40), (255, 255, 255), -1)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts, frame.time_base = round(t * 1000), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(path)) as container:  # the source's duration, as its container states it
        return float(container.duration / av.time_base)


def test_variable_frame_rate_times_and_duration(trained_checkpoint, tmp_path, capfd):
    # 20 frames 50 ms apart, then 6 frames 0.5 s apart: time_s is each frame's timestamp, not index / fps.
    times = [i * 0.05 for i in range(20)] + [1.5 + i * 0.5 for i in range(6)]
    duration = _vfr_clip(tmp_path / "vfr.mp4", times)
    capfd.readouterr()
    assert cli(["video", "--model", str(trained_checkpoint), "--source", str(tmp_path / "vfr.mp4"), "--imgsz", "64",
                "--conf", "0.0001", "--output", str(tmp_path / "out.mp4"), "--save-detections", str(tmp_path / "d.jsonl")]) == 0
    out, err = capfd.readouterr()
    summary = json.loads(out)  # stdout is the JSON summary alone: the progress bar is on stderr (issue 21, item 7)
    rows = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert {r["frame"] for r in rows} >= {0, 19, 25}
    assert all(r["time_s"] == pytest.approx(times[r["frame"]], abs=1e-3) for r in rows)
    frames, fps = _decode(summary["output"])  # constant rate: every frame, and the durations agree within a frame
    assert len(frames) == 26 and abs(len(frames) / fps - duration) <= 1 / fps
