"""Benchmark result files: VisDrone result folders and COCO results JSON, read back by independent readers."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from ema_yolo.cli import main as cli
from ema_yolo.data.coco import convert_coco
from ema_yolo.data.synth import make_coco_raw, make_visdrone_raw
from ema_yolo.data.visdrone import convert_visdrone


def test_visdrone_result_files_round_trip(tmp_path):
    truth = make_visdrone_raw(tmp_path / "raw", images=4, seed=7)
    convert_visdrone(tmp_path / "raw", tmp_path / "vd")
    data = tmp_path / "vd" / "data.yaml"
    stems = sorted(truth)
    # Jittered ground truth plus false positives; 520 detections on the first image (20 past the cap of 500),
    # none on the last one.
    rng, predictions = np.random.default_rng(0), []
    for stem in stems[:-1]:
        for cls, x, y, w, h in truth[stem]["objects"]:
            jitter = rng.normal(0, 1.5, 4)
            predictions.append({"image_id": stem, "category_id": cls + 1, "bbox": [float(v) for v in
                                (max(x, 0) + jitter[0], max(y, 0) + jitter[1], w + jitter[2], h + jitter[3])],
                                "score": float(rng.random())})
    for i in range(520 - len([p for p in predictions if p["image_id"] == stems[0]])):
        predictions.append({"image_id": stems[0], "category_id": int(rng.integers(1, 11)),
                            "bbox": [float(v) for v in rng.uniform(0, 150, 2)] + [8.5, 6.25], "score": float(rng.random()) * 0.9})
    (tmp_path / "p.json").write_text(json.dumps(predictions))
    assert cli(["eval", "--data", str(data), "--predictions", str(tmp_path / "p.json"), "--protocol", "visdrone",
                "--json", str(tmp_path / "a.json"), "--save-visdrone", str(tmp_path / "results")]) == 0

    files = sorted(p.stem for p in (tmp_path / "results").iterdir())
    assert files == stems and (tmp_path / "results" / f"{stems[-1]}.txt").read_text() == ""
    for stem in stems[:-1]:
        rows = np.loadtxt(tmp_path / "results" / f"{stem}.txt", delimiter=",", ndmin=2)  # as the toolkit reads them
        mine = sorted((p for p in predictions if p["image_id"] == stem), key=lambda p: -p["score"])[:500]
        assert rows.shape == (len(mine), 8) and (rows[:, 6:] == -1).all()
        expected = [[*p["bbox"], p["score"], p["category_id"]] for p in mine]  # VisDrone category = class + 1
        assert np.array_equal(rows[:, :6], np.array(expected))  # exact: the highest 500 scores, original pixels
    assert cli(["eval", "--data", str(data), "--visdrone-results", str(tmp_path / "results"), "--protocol", "visdrone",
                "--json", str(tmp_path / "b.json")]) == 0
    direct, back = json.loads((tmp_path / "a.json").read_text()), json.loads((tmp_path / "b.json").read_text())
    assert back == direct and 0 < direct["AP50"] < 1
    (tmp_path / "results" / "notes.md").write_text("mine")  # a folder that is not only result files is never replaced
    assert cli(["eval", "--data", str(data), "--predictions", str(tmp_path / "p.json"), "--protocol", "visdrone",
                "--save-visdrone", str(tmp_path / "results")]) == 1
    assert (tmp_path / "results" / "notes.md").read_text() == "mine"
    labels = next(p for p in Path(data).parent.rglob("*.txt")).parent  # the split's own label files: .txt, not results
    before = {p.name: p.read_text() for p in labels.iterdir()}
    assert cli(["eval", "--data", str(data), "--predictions", str(tmp_path / "p.json"), "--protocol", "visdrone",
                "--save-visdrone", str(labels)]) == 1
    assert {p.name: p.read_text() for p in labels.iterdir()} == before


def test_visdrone_results_bad_input(tmp_path, capsys):
    make_visdrone_raw(tmp_path / "raw", images=2, seed=1)
    convert_visdrone(tmp_path / "raw", tmp_path / "vd")
    data = str(tmp_path / "vd" / "data.yaml")
    (tmp_path / "r").mkdir()
    stems = sorted(p.stem for p in (tmp_path / "vd" / "images").iterdir())
    (tmp_path / "r" / f"{stems[0]}.txt").write_text("1,2,3,4,0.5,4,-1,-1\n1,2,3,4,0.5,12,-1,-1\n")
    assert cli(["eval", "--data", data, "--visdrone-results", str(tmp_path / "r"), "--protocol", "visdrone"]) == 1
    assert f"1 result file(s) missing, e.g. ['{stems[1]}.txt']" in capsys.readouterr().err
    (tmp_path / "r" / f"{stems[1]}.txt").write_text("")
    assert cli(["eval", "--data", data, "--visdrone-results", str(tmp_path / "r"), "--protocol", "visdrone"]) == 1
    assert f"{stems[0]}.txt:2: not a VisDrone result line" in capsys.readouterr().err


def test_coco_results_json_with_original_ids(trained_checkpoint, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    # Custom, non-contiguous category ids and file names that are not the image ids: only the converter's record
    # can map them back. The classes are named as the model's, which eval matches by name. Object areas are not the
    # box areas (as COCO's polygon areas are not), and crowd boxes stay: pycocotools uses both.
    make_coco_raw(tmp_path / "raw", images=6, seed=3, categories={1: "square", 3: "disc", 44: "triangle"})
    annotations = json.loads((tmp_path / "raw" / "annotations.json").read_text())
    for a in annotations["annotations"]:
        a["area"] = a["area"] * (1.0 if a["iscrowd"] else 0.6)
    for i, image in enumerate(annotations["images"]):
        (tmp_path / "raw" / "images" / image["file_name"]).rename(tmp_path / "raw" / "images" / f"scene-{i}.jpg")
        image["file_name"] = f"scene-{i}.jpg"
    (tmp_path / "raw" / "annotations.json").write_text(json.dumps(annotations))
    convert_coco(tmp_path / "raw" / "annotations.json", tmp_path / "raw" / "images", tmp_path / "coco")
    data = str(tmp_path / "coco" / "data.yaml")
    # A model's predictions: written with the original ids.
    assert cli(["eval", "--data", data, "--model", str(trained_checkpoint), "--imgsz", "224", "--device", "cpu",
                "--save-coco", str(tmp_path / "res" / "model.json")]) == 0
    results = json.loads((tmp_path / "res" / "model.json").read_text())
    assert results and {r["image_id"] for r in results} <= {100 + i for i in range(6)}
    assert {r["category_id"] for r in results} <= {1, 3, 44}

    # Predictions that score in between (jittered ground truth, some with the wrong class, random scores) in the
    # converted split's ids (file stem, class + 1): ema-yolo eval and pycocotools on the original file agree.
    rng, classes, predictions = np.random.default_rng(0), {1: 1, 3: 2, 44: 3}, []
    for image in annotations["images"]:
        for a in (a for a in annotations["annotations"] if a["image_id"] == image["id"]):
            if a["iscrowd"]:  # a confident detection inside a crowd box: pycocotools ignores it, no false positive
                x, y, w, h = a["bbox"]
                predictions.append({"image_id": image["file_name"][:-4], "category_id": classes[a["category_id"]],
                                    "score": 0.99, "bbox": [x + 2, y + 2, w / 2, h / 2]})
                continue
            jitter = rng.normal(0, 2.5, 4)
            category = classes[a["category_id"]] if rng.random() > 0.15 else int(rng.integers(1, 4))
            predictions.append({"image_id": image["file_name"][:-4], "category_id": category, "score": float(rng.random()),
                                "bbox": [float(v + j) for v, j in zip(a["bbox"], jitter)]})
    (tmp_path / "p.json").write_text(json.dumps(predictions))
    assert cli(["eval", "--data", data, "--predictions", str(tmp_path / "p.json"), "--json", str(tmp_path / "m.json"),
                "--save-coco", str(tmp_path / "res" / "detections.json")]) == 0
    ours = json.loads((tmp_path / "m.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO(json.loads((tmp_path / "coco" / "coco_ids.json").read_text())["annotations"])  # the file read
        evaluator = COCOeval(api, api.loadRes(str(tmp_path / "res" / "detections.json")), "bbox")
        evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
    for key, value in zip(keys, evaluator.stats):
        assert ours[key] is None if value == -1 else ours[key] == pytest.approx(value, abs=1e-6), key  # -1: undefined
    assert 0.2 < ours["AP"] < 0.9


def test_coco_results_need_the_ids(tmp_path, capsys):
    make_coco_raw(tmp_path / "raw", images=2, seed=0)
    convert_coco(tmp_path / "raw" / "annotations.json", tmp_path / "raw" / "images", tmp_path / "coco")
    (tmp_path / "coco" / "coco_ids.json").unlink()
    (tmp_path / "p.json").write_text(json.dumps([{"image_id": 100, "category_id": 1, "bbox": [1, 1, 9, 9], "score": 0.5}]))
    assert cli(["eval", "--data", str(tmp_path / "coco" / "data.yaml"), "--predictions", str(tmp_path / "p.json"),
                "--save-coco", str(tmp_path / "out.json")]) == 1
    assert "coco_ids.json: not found" in capsys.readouterr().err  # stems are ids, but 3 classes are not COCO's 80
    assert not (tmp_path / "out.json").exists()
