"""Dataset converters: round trips on generated raw data, bad input, archives, atomic output, training on the result."""

import json
import shutil
import zipfile

import pytest

from ema_yolo.cli import main as cli
from ema_yolo.data.coco import category_mapping, convert_coco
from ema_yolo.data.output import ConversionError
from ema_yolo.data.synth import make_coco_raw, make_visdrone_raw
from ema_yolo.data.visdrone import convert_visdrone


def _expected_rows(objects, size):
    """YOLO rows for pixel boxes, clipped to the image by hand (the oracle for both converters)."""
    width, height = size
    rows = []
    for cls, x, y, w, h in objects:
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if x1 > x0 and y1 > y0:
            rows.append((cls, (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height))
    return sorted(rows)


def _read_rows(path):
    return sorted(tuple([int(r.split()[0])] + [float(v) for v in r.split()[1:]]) for r in path.read_text().splitlines())


def _assert_labels(labels_dir, truth, class_of=lambda c: c):
    assert sorted(p.stem for p in labels_dir.glob("*.txt")) == sorted(truth)
    for stem, t in truth.items():
        got = _read_rows(labels_dir / f"{stem}.txt")
        want = _expected_rows([(class_of(c), *box) for c, *box in t["objects"]], t["size"])
        assert [g[0] for g in got] == [w[0] for w in want]
        assert all(abs(a - b) < 1e-6 for g, w in zip(got, want) for a, b in zip(g[1:], w[1:]))


def test_visdrone_round_trip(tmp_path):
    truth = make_visdrone_raw(tmp_path / "raw", images=6, seed=3)
    assert any(x < 0 or y < 0 for t in truth.values() for _, x, y, _, _ in t["objects"])  # clipping is exercised
    report = convert_visdrone(tmp_path / "raw", tmp_path / "out")
    _assert_labels(tmp_path / "out" / "labels", truth)
    for stem, t in truth.items():
        ignored = [tuple(map(int, r.split())) for r in (tmp_path / "out" / "ignored" / f"{stem}.txt").read_text().splitlines()]
        assert sorted(ignored) == sorted(t["ignored"])
        # never re-encoded: the bytes are the original file's
        assert (tmp_path / "out" / "images" / f"{stem}.jpg").read_bytes() == (tmp_path / "raw" / "images" / f"{stem}.jpg").read_bytes()
    assert report.counts["images"] == 6 and report.problems == []
    assert report.counts["others (category 11) not labelled"] == 2
    assert "names:\n  0: pedestrian" in (tmp_path / "out" / "data.yaml").read_text()


def test_visdrone_several_splits_and_zip_archives(tmp_path):
    truth = {}
    for split, seed in (("train", 1), ("val", 2)):
        truth[split] = make_visdrone_raw(tmp_path / "src" / f"VisDrone2019-DET-{split}", images=3, seed=seed)
    folders = tmp_path / "src"
    convert_visdrone(folders, tmp_path / "from_folders")
    archives = tmp_path / "zips"
    archives.mkdir()
    for split in truth:
        with zipfile.ZipFile(archives / f"VisDrone2019-DET-{split}.zip", "w") as z:
            for f in sorted((folders / f"VisDrone2019-DET-{split}").rglob("*")):
                z.write(f, f.relative_to(folders))
    convert_visdrone(archives, tmp_path / "from_zips")
    for out in ("from_folders", "from_zips"):
        for split, t in truth.items():
            _assert_labels(tmp_path / out / split / "labels", t)
        yaml = (tmp_path / out / "data.yaml").read_text()
        assert "train: train/images" in yaml and "val: val/images" in yaml
    # one archive alone is a source too
    convert_visdrone(archives / "VisDrone2019-DET-val.zip", tmp_path / "one_zip")
    _assert_labels(tmp_path / "one_zip" / "labels", truth["val"])


def test_visdrone_bad_input_is_reported_and_valid_data_kept(tmp_path, capsys):
    raw = tmp_path / "raw"
    truth = make_visdrone_raw(raw, images=4, seed=5)
    stems = sorted(truth)
    a = raw / "annotations" / f"{stems[0]}.txt"
    good = a.read_text().splitlines()
    # CRLF, trailing commas, blank lines, no final newline, and four bad lines among the good ones
    bad = ["1,2,3", "10,10,x,5,1,4,0,0", "10,10,-5,5,1,4,0,0", "10,10,5,5,1,12,0,0"]
    a.write_bytes(("\r\n".join([good[0] + ","] + bad[:2] + [""] + good[1:] + bad[2:])).encode())
    (raw / "annotations" / "orphan.txt").write_text("1,1,5,5,1,1,0,0\n")  # annotation without image
    (raw / "images" / f"{stems[1]}.jpg").write_bytes(b"not a jpeg")  # unreadable image
    (raw / "annotations" / f"{stems[2]}.txt").unlink()  # image without annotation
    assert cli(["convert", "visdrone", str(raw), str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    for line_no in (2, 3, 4 + len(good), 5 + len(good)):
        assert f"{a}:{line_no}:" in err
    assert "orphan.txt: annotation without an image" in err and "unreadable image" in err
    assert "image without an annotation file" in err
    _assert_labels(tmp_path / "out" / "labels", {s: truth[s] for s in (stems[0], stems[3])})


def test_truncated_zip_and_missing_source_fail_cleanly(tmp_path, capsys):
    make_visdrone_raw(tmp_path / "VisDrone2019-DET-val", images=2)
    archive = tmp_path / "VisDrone2019-DET-val.zip"
    shutil.make_archive(str(archive.with_suffix("")), "zip", tmp_path, "VisDrone2019-DET-val")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert cli(["convert", "visdrone", str(archive), str(tmp_path / "out")]) == 1
    assert f"error: {archive}: not a readable zip archive" in capsys.readouterr().err
    assert cli(["convert", "visdrone", str(tmp_path / "nope"), str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists()
    # beside a good split folder, the truncated archive is reported and skipped
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.move(str(archive), folder)
    shutil.copytree(tmp_path / "VisDrone2019-DET-val", folder / "VisDrone2019-DET-train")
    assert cli(["convert", "visdrone", str(folder), str(tmp_path / "out2")]) == 0
    assert "not a readable zip archive" in capsys.readouterr().err
    assert len(list((tmp_path / "out2" / "labels").glob("*.txt"))) == 2  # one split left: single-split layout


def test_output_is_atomic(tmp_path, monkeypatch):
    make_visdrone_raw(tmp_path / "raw", images=3)
    import ema_yolo.data.visdrone as visdrone

    calls = []

    def failing_place(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return shutil.copyfile(args[0], args[1])

    monkeypatch.setattr(visdrone, "place_image", failing_place)
    with pytest.raises(KeyboardInterrupt):
        convert_visdrone(tmp_path / "raw", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # neither out nor a partial folder
    monkeypatch.undo()
    convert_visdrone(tmp_path / "raw", tmp_path / "out")
    with pytest.raises(ConversionError, match="already exists"):
        convert_visdrone(tmp_path / "raw", tmp_path / "out")
    convert_visdrone(tmp_path / "raw", tmp_path / "out", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


def test_coco_round_trip_standard_and_custom_ids(tmp_path):
    truth = make_coco_raw(tmp_path / "std", images=5, seed=2)
    convert_coco(tmp_path / "std" / "annotations.json", tmp_path / "std" / "images", tmp_path / "std_out", "coco80")
    coco80 = {1: 0, 3: 2, 44: 39}  # COCO 91-ids -> 80-class indices (person, car, bottle)
    _assert_labels(tmp_path / "std_out" / "labels", truth, class_of=coco80.__getitem__)
    record = json.loads((tmp_path / "std_out" / "coco_ids.json").read_text())
    for stem, t in truth.items():  # crowd boxes recorded with their class and area, as pycocotools needs them
        assert record["crowd"].get(f"{stem}.jpg", []) == [[0, *box, box[2] * box[3]] for box in t["crowd"]]
        assert record["areas"][f"{stem}.jpg"] == [w * h for *_, w, h in t["objects"]]
    custom = {42: "kite", 7: "boat", 13: "sign"}  # any ids, any order -> ascending ids map to 0..n-1
    truth = make_coco_raw(tmp_path / "custom", images=4, seed=4, categories=custom)
    convert_coco(tmp_path / "custom" / "annotations.json", tmp_path / "custom" / "images", tmp_path / "custom_out")
    _assert_labels(tmp_path / "custom_out" / "labels", truth, class_of={7: 0, 13: 1, 42: 2}.__getitem__)
    assert "names:\n  0: boat\n  1: sign\n  2: kite" in (tmp_path / "custom_out" / "data.yaml").read_text()


def test_category_mapping_auto_detects_standard_coco():
    from ultralytics.data.converter import coco80_to_coco91_class

    standard = [{"id": i, "name": f"c{i}"} for i in coco80_to_coco91_class()]
    mapping, names = category_mapping(standard)
    assert mapping[1] == 0 and mapping[90] == 79 and len(names) == 80
    mapping, _ = category_mapping(standard[:3])
    assert mapping == {1: 0, 2: 1, 3: 2}


def test_coco_bad_input(tmp_path, capsys):
    make_coco_raw(tmp_path / "c", images=3)
    data = json.loads((tmp_path / "c" / "annotations.json").read_text())
    data["annotations"].append({"id": 999, "image_id": 12345, "category_id": 1, "bbox": [1, 1, 5, 5]})
    data["annotations"].append({"id": 998, "image_id": 100, "category_id": 77, "bbox": [1, 1, 5, 5]})
    data["images"].append({"id": 7, "file_name": "missing.jpg", "width": 10, "height": 10})
    (tmp_path / "bad.json").write_text(json.dumps(data))
    assert cli(["convert", "coco", str(tmp_path / "bad.json"), str(tmp_path / "c" / "images"), str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "unknown image id 12345" in err and "unknown category id 77" in err and "missing.jpg" in err
    assert len(list((tmp_path / "out" / "labels").glob("*.txt"))) == 3
    (tmp_path / "broken.json").write_text('{"images": [\n  {"id": 1,,}\n]}')
    assert cli(["convert", "coco", str(tmp_path / "broken.json"), str(tmp_path), str(tmp_path / "o2")]) == 1
    assert f"{tmp_path / 'broken.json'}:2: invalid JSON" in capsys.readouterr().err


def test_synth_is_deterministic(tmp_path):
    for fmt in ("visdrone", "coco", "yolo", "segment", "pose", "obb", "classify"):
        for run in ("a", "b"):
            assert cli(["synth", fmt, str(tmp_path / f"{fmt}_{run}"), "--images", "3", "--seed", "7"]) == 0
        files_a = sorted(p for p in (tmp_path / f"{fmt}_a").rglob("*") if p.is_file() and p.name != "data.yaml")
        assert files_a
        for f in files_a:
            assert f.read_bytes() == (tmp_path / f"{fmt}_b" / f.relative_to(tmp_path / f"{fmt}_a")).read_bytes()
    before = sorted((tmp_path / "yolo_a").rglob("*"))
    assert cli(["synth", "yolo", str(tmp_path / "yolo_a"), "--images", "5"]) == 1  # never mixed into an existing set
    assert sorted((tmp_path / "yolo_a").rglob("*")) == before


@pytest.mark.parametrize("fmt", ["visdrone", "coco"])
def test_ultralytics_trains_on_converted_set(fmt, tmp_path):
    from ultralytics import YOLO

    if fmt == "visdrone":
        make_visdrone_raw(tmp_path / "raw", images=8)
        convert_visdrone(tmp_path / "raw", tmp_path / "ds")
    else:
        make_coco_raw(tmp_path / "raw", images=8)
        convert_coco(tmp_path / "raw" / "annotations.json", tmp_path / "raw" / "images", tmp_path / "ds")
    model = YOLO("yolov8n-ema.yaml")
    model.train(data=str(tmp_path / "ds" / "data.yaml"), epochs=1, imgsz=64, batch=4, device="cpu", workers=0,
                amp=False, plots=False, project=str(tmp_path), name="t", verbose=False)
    assert (tmp_path / "t" / "weights" / "last.pt").is_file()
    assert model.trainer.validator.metrics.box.nc == (10 if fmt == "visdrone" else 3)


@pytest.mark.parametrize("task", ["segment", "obb"])
def test_generated_polygons_cover_the_drawn_objects(task, tmp_path):
    # Oracle: the pixels drawn in object colours (every channel >= 120; the background stays below 90) must be the
    # union of the label polygons, rasterised independently of the generator.
    import cv2
    import numpy as np

    from ema_yolo.data.synth import make_task_dataset

    make_task_dataset(tmp_path, task, train=6, val=1, size=64, seed=2)
    for image_path in sorted((tmp_path / "images" / "train").glob("*.png")):
        image = cv2.imread(str(image_path))
        drawn = image.min(2) >= 110
        labelled = np.zeros(drawn.shape, np.uint8)
        for row in (tmp_path / "labels" / "train" / f"{image_path.stem}.txt").read_text().splitlines():
            points = np.array(row.split()[1:], float).reshape(-1, 2) * 64 - 0.5  # to OpenCV's pixel-centre coordinates
            cv2.fillPoly(labelled, [np.round(points * 16).astype(np.int32)], 1, shift=4)  # 1/16-pixel precision
        iou = (drawn & (labelled > 0)).sum() / (drawn | (labelled > 0)).sum()
        assert iou > 0.8, (image_path.name, iou)  # objects 8-21 px wide: the boundary pixels cost up to ~0.15
