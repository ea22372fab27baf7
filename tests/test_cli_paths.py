"""Every path a command takes means what it means to the user: relative to the working directory, from any folder.

`compare --out` (the one path handed to Ultralytics as a `project`) is covered in test_compare.py, `eval` with a
relative `--data`, `--predictions` and `--json` in test_eval.py.
"""

import json
import os

import cv2

from ema_yolo.cli import main as cli
from ema_yolo.eval.protocols import load_ground_truth

from test_video import _clip


def test_commands_write_where_relative_paths_point(trained_checkpoint, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert cli(["synth", "visdrone", "raw/visdrone", "--images", "3"]) == 0
    assert cli(["synth", "coco", "raw/coco", "--images", "2"]) == 0
    assert cli(["convert", "visdrone", "raw/visdrone", "../sets/visdrone"]) == 0
    assert cli(["convert", "coco", "raw/coco/annotations.json", "raw/coco/images", "sets/coco"]) == 0
    assert len(list((tmp_path / "sets" / "visdrone" / "labels").glob("*.txt"))) == 3
    assert len(list((work / "sets" / "coco" / "images").glob("*.jpg"))) == 2
    assert f"path: {work / 'sets' / 'coco'}\n" in (work / "sets" / "coco" / "data.yaml").read_text()

    gt = load_ground_truth("../sets/visdrone/data.yaml")
    perfect = [{**{k: a[k] for k in ("image_id", "category_id", "bbox")}, "score": 1.0} for a in gt.coco["annotations"]]
    (work / "perfect.json").write_text(json.dumps(perfect))
    assert cli(["eval", "--data", "../sets/visdrone/data.yaml", "--predictions", "perfect.json", "--protocol", "visdrone",
                "--json", "metrics/visdrone.json"]) == 0
    assert json.loads((work / "metrics" / "visdrone.json").read_text())["AP"] == 1.0

    _clip(work / "clip.avi", frames=3)
    model = os.path.relpath(trained_checkpoint, work)
    assert cli(["video", "--model", model, "--source", "clip.avi", "--output", "videos/clip.mp4", "--imgsz", "64",
                "--save-detections", "videos/clip.csv"]) == 0
    cap = cv2.VideoCapture(str(work / "videos" / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3 and (work / "videos" / "clip.csv").is_file()
    cap.release()

    assert cli(["bench", "module", "--shapes", "1x32x4x4", "--repeats", "1", "--rounds", "1", "--json", "bench.json"]) == 0
    assert json.loads((work / "bench.json").read_text())["rows"][0]["shape"] == [1, 32, 4, 4]
