"""Evaluation protocols against hand-computed cases and pycocotools run directly; eval command paths and bad input."""

import contextlib
import io
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from ema_yolo.cli import main as cli
from ema_yolo.eval.protocols import EvalError, evaluate, load_ground_truth


def _dataset(root, images, names=("a", "b"), ignored=None):
    """Write a YOLO val split: images {stem: (w, h, [(cls, x, y, w, h) pixels])}, optional ignored regions per stem."""
    for sub in ("images", "labels", "ignored"):
        (root / "val" / sub).mkdir(parents=True, exist_ok=True)
    for stem, (width, height, boxes) in images.items():
        cv2.imwrite(str(root / "val" / "images" / f"{stem}.png"), np.zeros((height, width, 3), np.uint8))
        rows = [f"{c} {(x + w / 2) / width} {(y + h / 2) / height} {w / width} {h / height}" for c, x, y, w, h in boxes]
        (root / "val" / "labels" / f"{stem}.txt").write_text("\n".join(rows) + "\n")
    for stem, regions in (ignored or {}).items():
        (root / "val" / "ignored" / f"{stem}.txt").write_text("".join(" ".join(map(str, r)) + "\n" for r in regions))
    names_yaml = "".join(f"  {i}: {n}\n" for i, n in enumerate(names))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: val/images\nval: val/images\nnames:\n{names_yaml}")
    return root / "data.yaml"


def _det(image_id, cls, box, score=0.9):
    return {"image_id": image_id, "category_id": cls + 1, "bbox": list(box), "score": score}


def test_perfect_predictions_score_one(tmp_path):
    data = _dataset(tmp_path, {"1": (200, 160, [(0, 10, 10, 50, 40), (1, 100, 50, 60, 60)]), "img2": (120, 120, [(1, 5, 5, 30, 30)])})
    gt = load_ground_truth(data)
    predictions = [_det(1, 0, (10, 10, 50, 40)), _det(1, 1, (100, 50, 60, 60)), _det("img2", 1, (5, 5, 30, 30))]
    for protocol in ("coco", "visdrone"):
        metrics = evaluate(gt, predictions, protocol)
        assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
        assert metrics["per_class"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}


def test_known_iou_shift(tmp_path):
    # Shifting a 100x100 box by 23 px gives IoU 77/123 = 0.626: a match at IoU 0.50, 0.55, 0.60 only -> AP = 3/10.
    gt = load_ground_truth(_dataset(tmp_path, {"7": (300, 200, [(0, 50, 50, 100, 100)])}))
    metrics = evaluate(gt, [_det(7, 0, (73, 50, 100, 100))], "coco")
    assert metrics["AP"] == pytest.approx(0.3) and metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == 0.0
    assert metrics["APl"] == pytest.approx(0.3) and metrics["APm"] is None  # 100x100 px > 96^2: COCO 'large'; no medium


def test_visdrone_ignored_region_rules(tmp_path):
    # Ground truth 'hidden' lies inside an ignored region and is never detected; a confident false positive lies
    # there too. VisDrone removes both (more than half of their area inside), COCO counts both against the model.
    images = {"5": (400, 300, [(0, 20, 20, 40, 40), (0, 300, 200, 30, 30)])}
    data = _dataset(tmp_path, images, ignored={"5": [(280, 180, 100, 100)]})
    gt = load_ground_truth(data)
    predictions = [_det(5, 0, (20, 20, 40, 40), 0.8), _det(5, 0, (340, 190, 20, 20), 0.95)]
    assert evaluate(gt, predictions, "visdrone")["AP"] == pytest.approx(1.0)
    assert evaluate(gt, predictions, "coco")["AP"] < 0.5
    # a detection only partly (<= 50 %) inside an ignored region still counts as a false positive
    half_out = [_det(5, 0, (20, 20, 40, 40), 0.8), _det(5, 0, (250, 190, 40, 20), 0.95)]  # 10/40 inside
    assert evaluate(gt, half_out, "visdrone")["AP"] < 1.0


def test_max_detections_caps(tmp_path):
    # One true positive with the lowest score behind N confident false positives on the same image.
    gt = load_ground_truth(_dataset(tmp_path, {"3": (1000, 1000, [(0, 500, 500, 50, 50)])}))

    def predictions(n_false):
        fps = [_det(3, 0, (10 + (i % 30) * 30, 10 + (i // 30) * 30, 20, 20), 0.9) for i in range(n_false)]
        return fps + [_det(3, 0, (500, 500, 50, 50), 0.1)]

    assert evaluate(gt, predictions(150), "coco")["AP50"] == 0.0  # cut at 100 detections
    assert evaluate(gt, predictions(150), "visdrone")["AP50"] == pytest.approx(1 / 151, rel=1e-3)  # kept within 500
    assert evaluate(gt, predictions(500), "visdrone")["AP50"] == 0.0  # the 501st detection is dropped
    assert evaluate(gt, predictions(150), "visdrone")["AR100"] == 0.0 and evaluate(gt, predictions(150), "visdrone")["AR500"] == 1.0


def _pycocotools(gt_json, predictions):
    """pycocotools' COCOeval run directly on a COCO ground-truth dict, summarised."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO()
        api.dataset = gt_json
        api.createIndex()
        direct = COCOeval(api, api.loadRes(predictions), "bbox")
        direct.evaluate(), direct.accumulate(), direct.summarize()
    return direct


def _assert_summary_equals_pycocotools(ours, direct):
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")  # its stats order
    for key, value in zip(keys, direct.stats):
        assert ours[key] == (None if value == -1 else pytest.approx(value, abs=1e-9)), key  # -1: undefined


def test_coco_protocol_equals_pycocotools_run_directly(tmp_path):
    rng = np.random.default_rng(0)
    images, gt_json, preds = {}, {"images": [], "annotations": [], "categories": [{"id": 1}, {"id": 2}]}, []
    for i in range(12):
        boxes = [(int(rng.integers(0, 2)), *map(int, rng.integers(0, 150, 2)), *map(int, rng.integers(8, 60, 2))) for _ in range(5)]
        images[str(i)] = (256, 224, boxes)
        gt_json["images"].append({"id": i, "width": 256, "height": 224})
        for c, x, y, w, h in boxes:
            gt_json["annotations"].append({"id": len(gt_json["annotations"]) + 1, "image_id": i, "category_id": c + 1,
                                           "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            jitter = rng.normal(0, 4, 4)
            preds.append(_det(i, c if rng.random() > 0.1 else 1 - c, (x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]), float(rng.random())))
    ours = evaluate(load_ground_truth(_dataset(tmp_path, images)), preds, "coco")
    _assert_summary_equals_pycocotools(ours, _pycocotools(gt_json, preds))


def test_undefined_ap_is_null_as_in_pycocotools(tmp_path, monkeypatch, capsys):
    # Class 'b' never occurs and no object is large (> 96^2 px): pycocotools marks their AP -1, undefined. Perfect
    # predictions then score AP 1.0 over the classes present, with 'b' and APl None (printed n/a, JSON null), and a
    # class present but missed entirely scores 0.0, not None. pycocotools run directly is the oracle.
    boxes = {1: [(0, 10, 10, 50, 40), (2, 100, 50, 60, 60)], 2: [(2, 5, 5, 30, 30)]}
    data = _dataset(tmp_path, {str(i): (200, 160, b) for i, b in boxes.items()}, names=("a", "b", "c"))
    gt_json = {"images": [{"id": i, "width": 200, "height": 160} for i in boxes],
               "categories": [{"id": c} for c in (1, 2, 3)], "annotations": []}
    for i, image in boxes.items():
        for c, *box in image:
            gt_json["annotations"].append({"id": len(gt_json["annotations"]) + 1, "image_id": i, "category_id": c + 1,
                                           "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    perfect = [_det(i, c, box) for i, image in boxes.items() for c, *box in image]
    gt = load_ground_truth(data)
    for predictions, expected_ap, per_class in ((perfect, 1.0, {"a": 1.0, "b": None, "c": 1.0}),
                                                (perfect[1:], 0.5, {"a": 0.0, "b": None, "c": 1.0})):
        direct = _pycocotools(gt_json, predictions)
        precision = direct.eval["precision"][:, :, :, 0, -1]
        oracle = {n: float(precision[:, :, k].mean()) if (precision[:, :, k] > -1).any() else None for k, n in enumerate("abc")}
        assert oracle == pytest.approx(per_class)
        ours = evaluate(gt, predictions, "coco")
        assert ours["per_class"] == pytest.approx(oracle) and ours["AP"] == pytest.approx(expected_ap)
        _assert_summary_equals_pycocotools(ours, direct)
        assert ours["APl"] is None and ours["ARl"] is None
        visdrone = evaluate(gt, predictions, "visdrone")
        # the toolkit's mean2 over evalClass weighs a class by its images: 'a' is in one image, 'c' in two
        toolkit_ap = (oracle["a"] + 2 * oracle["c"]) / 3
        assert visdrone["per_class"] == pytest.approx(oracle) and visdrone["AP"] == pytest.approx(toolkit_ap)
    # VisDrone: every detection inside an ignored region leaves none to score; classes present are missed, 'b' undefined
    ignored = load_ground_truth(_dataset(tmp_path / "ig", {"1": (200, 160, boxes[1])}, ("a", "b", "c"), {"1": [(150, 0, 50, 50)]}))
    missed = evaluate(ignored, [_det(1, 1, (160, 5, 20, 20))], "visdrone")
    assert missed["per_class"] == {"a": 0.0, "b": None, "c": 0.0} and missed["AP"] == 0.0 and missed["AR500"] == 0.0
    # the command, run from another folder with relative paths: n/a printed, null stored
    monkeypatch.chdir(tmp_path / "val")
    (tmp_path / "val" / "p.json").write_text(json.dumps(perfect))
    assert cli(["eval", "--data", "../data.yaml", "--predictions", "p.json", "--json", "out/m.json"]) == 0
    printed = dict(line.split() for line in capsys.readouterr().out.splitlines() if len(line.split()) == 2)
    assert (printed["AP"], printed["APl"], printed["a"], printed["b"]) == ("1.0000", "n/a", "1.0000", "n/a")
    stored = json.loads((tmp_path / "val" / "out" / "m.json").read_text())
    assert stored["per_class"] == pytest.approx({"a": 1.0, "b": None, "c": 1.0}) and stored["APl"] is None


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    data = _dataset(tmp_path, {"1": (100, 100, [(0, 10, 10, 20, 20)])})
    gt = load_ground_truth(data)
    with pytest.raises(EvalError, match=r"1 image id\(s\) not in the dataset split, e.g. \['nope'\]"):
        evaluate(gt, [_det("nope", 0, (1, 1, 5, 5))], "coco", "p.json")
    with pytest.raises(EvalError, match=r"category ids \[7\] are not this dataset's \(1..2\)"):
        evaluate(gt, [_det(1, 6, (1, 1, 5, 5))], "coco", "p.json")
    nothing = evaluate(gt, [], "coco", "p.json")  # a model that detects nothing scores 0 where pycocotools defines AP
    assert nothing["AP"] == 0.0 and nothing["per_class"] == {"a": 0.0, "b": None} and nothing["APl"] is None
    (tmp_path / "p.json").write_text("[]")
    assert cli(["eval", "--data", str(data), "--predictions", str(tmp_path / "p.json")]) == 0
    capsys.readouterr()
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    for model, reason in (("missing.pt", "no such model file"), (str(tmp_path / "broken.pt"), "cannot load model")):
        assert cli(["eval", "--data", str(data), "--model", model]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {model}: {reason}")
    for f in (tmp_path / "val" / "labels").iterdir():
        f.unlink()
    assert cli(["eval", "--data", str(data), "--predictions", str(tmp_path / "p.json")]) == 1
    assert "no label files for split 'val'" in capsys.readouterr().err


def test_model_path_and_predictions_path_agree(trained_checkpoint, tiny_dataset, tmp_path):
    from ultralytics import YOLO

    YOLO(trained_checkpoint).val(data=str(tiny_dataset), imgsz=64, batch=16, save_json=True, conf=0.001, max_det=300,
                                 plots=False, project=str(tmp_path), name="v", device="cpu")
    predictions = tmp_path / "v" / "predictions.json"
    out = subprocess.run(
        [sys.executable, "-m", "ema_yolo", "eval", "--data", str(tiny_dataset), "--model", str(trained_checkpoint),
         "--imgsz", "64", "--json", "-", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    from_model = json.loads(out.stdout)  # nothing but the JSON on stdout
    assert cli(["eval", "--data", str(tiny_dataset), "--predictions", str(predictions), "--json", str(tmp_path / "m.json")]) == 0
    from_file = json.loads((tmp_path / "m.json").read_text())
    assert from_model.keys() == from_file.keys() and from_model["per_class"] == pytest.approx(from_file["per_class"])
    for key in from_file:
        if key != "per_class":
            assert from_model[key] == pytest.approx(from_file[key], abs=1e-9), key


# ---- the VisDrone2019-DET toolkit's rules (ema_yolo.eval.visdrone_toolkit), each case worked out from its code ----
VISDRONE_NAMES = ("pedestrian", "people", "bicycle", "car", "van", "truck", "tricycle", "awning-tricycle", "bus", "motor")


def test_visdrone_drops_ignored_before_the_500_cap(tmp_path):
    # saveAnnoRes drops detections in ignored regions first, calcAccuracy caps at the first 500 rows after that: 500
    # confident boxes wholly inside an ignored region cost nothing, and the writer leaves them out before capping.
    images = {"5": (400, 300, [(0, 20, 20, 40, 40), (1, 100, 150, 30, 30)])}
    data = _dataset(tmp_path, images, names=VISDRONE_NAMES, ignored={"5": [(200, 0, 200, 300)]})
    perfect = [_det(5, 0, (20, 20, 40, 40), 0.5), _det(5, 1, (100, 150, 30, 30), 0.5)]
    inside = [_det(5, i % 2, (210 + i % 17 * 10, 5 + i // 17 * 9, 8, 8), 0.9) for i in range(500)]
    metrics = evaluate(load_ground_truth(data), inside + perfect, "visdrone")
    assert metrics["AP"] == 1.0 and metrics["AR500"] == 1.0
    (tmp_path / "p.json").write_text(json.dumps(inside + perfect))
    assert cli(["eval", "--data", str(data), "--predictions", str(tmp_path / "p.json"), "--protocol", "visdrone",
                "--save-visdrone", str(tmp_path / "results")]) == 0
    rows = np.loadtxt(tmp_path / "results" / "5.txt", delimiter=",", ndmin=2)
    assert rows[:, :4].tolist() == [[20, 20, 40, 40], [100, 150, 30, 30]]


def test_visdrone_half_inside_is_dropped_after_matlab_rounding(tmp_path):
    # dropObjectsInIgr: region max(1, [52 1 48 99]) fills MATLAB rows 1..100, columns 52..100 of the 100x100 image.
    # A 20x20 box at MATLAB (x, y) covers the integral-image columns x+1..x+20: x = 41 -> 10 of 20 columns inside,
    # share 0.5 -> dropped (the toolkit keeps < 0.5 only); x = 40 -> 0.45 -> kept. round() is MATLAB's (halves away
    # from zero): 40.5 -> 41, dropped, where round-half-even would give 40 and keep it.
    data = _dataset(tmp_path, {"1": (100, 100, [(0, 2, 60, 20, 20)])}, ignored={"1": [(52, 1, 48, 99)]})
    gt = load_ground_truth(data)
    true_positive = _det(1, 0, (2, 60, 20, 20), 0.5)
    for left, kept in ((41, False), (40.5, False), (40, True), (39.5, True)):
        ap = evaluate(gt, [_det(1, 0, (left, 11, 20, 20), 0.9), true_positive], "visdrone")["AP"]
        # kept: a false positive ranked first -> rec [0, 1], prec [0, 0.5] -> VOCap = 0.5 at every IoU threshold
        assert ap == (0.5 if kept else 1.0), left
    # ground truth is dropped by the same rule: an object half inside is not expected, missing it costs nothing
    hidden = load_ground_truth(_dataset(tmp_path / "g", {"1": (100, 100, [(0, 2, 60, 20, 20), (0, 41, 11, 20, 20)])},
                                        ignored={"1": [(52, 1, 48, 99)]}))
    assert evaluate(hidden, [true_positive], "visdrone")["AP"] == 1.0


def test_visdrone_ap_is_vocap_all_point(tmp_path):
    # Two objects; detections TP 0.9, FP 0.8, TP 0.7 -> rec [.5 .5 1], prec [1 .5 2/3]. VOCap (all-point):
    # 0.5 * 1 + 0.5 * 2/3 = 5/6. pycocotools' 101-point interpolation gives (51 + 50 * 2/3) / 101 instead.
    gt = load_ground_truth(_dataset(tmp_path, {"1": (200, 200, [(0, 10, 10, 30, 30), (0, 100, 100, 30, 30)])}))
    predictions = [_det(1, 0, (10, 10, 30, 30), 0.9), _det(1, 0, (150, 10, 30, 30), 0.8), _det(1, 0, (100, 100, 30, 30), 0.7)]
    assert evaluate(gt, predictions, "visdrone")["AP"] == pytest.approx(5 / 6, abs=1e-12)
    assert evaluate(gt, predictions, "coco")["AP"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)


def test_visdrone_result_files_cap_the_first_500_rows_in_file_order(tmp_path):
    # calcAccuracy reads det(1:min(end, 500), :) across classes, in the file's order, whatever the scores: a true
    # positive of class 'a' in row 501, behind 500 low-score false positives of class 'b', is never seen.
    data = _dataset(tmp_path, {"1": (1000, 1000, [(0, 500, 500, 50, 50), (1, 900, 900, 50, 50)])}, names=VISDRONE_NAMES)
    (tmp_path / "r").mkdir()
    false = "".join(f"{10 + i % 40 * 20},{10 + i // 40 * 30},15,15,0.1,2,-1,-1\n" for i in range(500))
    true = "500,500,50,50,0.9,1,-1,-1\n900,900,50,50,0.9,2,-1,-1\n"
    for order, expected in ((false + true, {"pedestrian": 0.0, "people": 0.0}), (true + false, {"pedestrian": 1.0})):
        (tmp_path / "r" / "1.txt").write_text(order)
        assert cli(["eval", "--data", str(data), "--visdrone-results", str(tmp_path / "r"), "--protocol", "visdrone",
                    "--json", str(tmp_path / "m.json")]) == 0
        per_class = json.loads((tmp_path / "m.json").read_text())["per_class"]
        assert {k: per_class[k] for k in expected} == pytest.approx(expected)


# ---- ground truth as Ultralytics' validator sees it (verify_image_label) ----


def test_polygon_label_rows_are_boxes(tmp_path):
    # Segment-format rows in a detection set: Ultralytics takes their bounding box (segments2boxes).
    data = _dataset(tmp_path, {"1": (200, 100, [])})
    (tmp_path / "val" / "labels" / "1.txt").write_text("0 0.1 0.2 0.3 0.2 0.3 0.6 0.1 0.6\n1 0.5 0.1 0.9 0.5 0.7 0.9\n")
    gt = load_ground_truth(data)
    assert np.allclose([a["bbox"] for a in gt.coco["annotations"]], [[20, 20, 40, 40], [100, 10, 80, 80]], atol=1e-4)
    perfect = [_det(1, 0, (20, 20, 40, 40)), _det(1, 1, (100, 10, 80, 80))]
    assert evaluate(gt, perfect, "coco")["AP"] == pytest.approx(1.0)


def test_duplicate_and_out_of_bounds_rows_as_ultralytics(tmp_path, capsys):
    # A duplicated row is removed; an image with a coordinate past Ultralytics' 1 % tolerance is dropped, one line each.
    data = _dataset(tmp_path, {"1": (100, 100, [(0, 10, 10, 20, 20)] * 2), "2": (100, 100, [(1, 10, 10, 20, 20)]),
                               "3": (100, 100, [(0, 50, 50, 20, 20)])})
    with open(tmp_path / "val" / "labels" / "2.txt", "a") as f:
        f.write("0 1.2 0.5 0.1 0.1\n")
    capsys.readouterr()
    gt = load_ground_truth(data)
    err = capsys.readouterr().err.splitlines()
    assert [im["id"] for im in gt.coco["images"]] == [1, 3] and len(gt.coco["annotations"]) == 2
    assert len(err) == 2 and err[0].endswith("1.txt: 1 duplicate labels removed")
    assert "2.txt: image dropped" in err[1] and "out of bounds" in err[1]
    assert evaluate(gt, [_det(1, 0, (10, 10, 20, 20)), _det(3, 0, (50, 50, 20, 20))], "coco")["AP"] == pytest.approx(1.0)


def test_bad_relative_path_in_the_yaml_is_one_error_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "d.yaml").write_text("path: no/such/folder\ntrain: images\nval: images\nnames:\n  0: a\n")
    monkeypatch.chdir(tmp_path)
    assert cli(["eval", "--data", "d.yaml", "--predictions", "p.json"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: d.yaml: ") and "no/such/folder" in err[0]


def test_converted_coco_from_an_older_converter_asks_for_a_rerun(tmp_path, capsys):
    from ema_yolo.data.coco import convert_coco
    from ema_yolo.data.synth import make_coco_raw

    make_coco_raw(tmp_path / "raw", images=2)
    convert_coco(tmp_path / "raw" / "annotations.json", tmp_path / "raw" / "images", tmp_path / "coco")
    record = json.loads((tmp_path / "coco" / "coco_ids.json").read_text())
    del record["crowd"], record["areas"]
    (tmp_path / "coco" / "coco_ids.json").write_text(json.dumps(record))
    (tmp_path / "p.json").write_text("[]")
    assert cli(["eval", "--data", str(tmp_path / "coco" / "data.yaml"), "--predictions", str(tmp_path / "p.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "re-run `ema-yolo convert coco`" in err[0]


# ---- a model whose classes are not the dataset's ----


def test_model_classes_matched_by_name(trained_checkpoint, tiny_dataset, tmp_path, capfd):
    from ultralytics import YOLO

    # The model knows square, disc, triangle (tiny_dataset). The same images relabelled: names in another order,
    # 'disc' renamed 'extra' (which the model lacks). Oracle: the model's own predictions on tiny_dataset, mapped by
    # name by hand, scored by pycocotools over the two shared classes.
    old_to_new, names = {0: 1, 1: 2, 2: 0}, ("triangle", "square", "extra")
    root = tmp_path / "renamed"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for image in sorted((tiny_dataset.parent / "images" / "val").iterdir()):
        (root / "images" / image.name).symlink_to(image)
        rows = (tiny_dataset.parent / "labels" / "val" / f"{image.stem}.txt").read_text().splitlines()
        (root / "labels" / f"{image.stem}.txt").write_text("".join(f"{old_to_new[int(r.split()[0])]} {r.split(None, 1)[1]}\n" for r in rows))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images\nval: images\nnames:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(names)))
    YOLO(trained_checkpoint).val(data=str(tiny_dataset), imgsz=64, batch=16, save_json=True, conf=0.001, max_det=300,
                                 plots=False, project=str(tmp_path), name="v", device="cpu")
    model_categories = {1: 2, 3: 1}  # square (model 0) -> dataset 'square' (2); triangle (model 2) -> 'triangle' (1)
    oracle = [{**p, "category_id": model_categories[p["category_id"]]}
              for p in json.loads((tmp_path / "v" / "predictions.json").read_text()) if p["category_id"] in model_categories]
    gt = load_ground_truth(root / "data.yaml")
    gt_json = {**gt.coco, "images": [{**im, "id": i} for i, im in enumerate(gt.coco["images"])]}
    index = {im["id"]: i for i, im in enumerate(gt.coco["images"])}
    gt_json["annotations"] = [{**a, "image_id": index[a["image_id"]]} for a in gt.coco["annotations"] if a["category_id"] != 3]
    gt_json["categories"] = gt.coco["categories"][:2]
    direct = _pycocotools(gt_json, [{**p, "image_id": index[p["image_id"]]} for p in oracle])
    capfd.readouterr()
    assert cli(["eval", "--data", str(root / "data.yaml"), "--model", str(trained_checkpoint), "--imgsz", "64",
                "--device", "cpu", "--json", str(tmp_path / "m.json")]) == 0
    out, err = capfd.readouterr()
    ours = json.loads((tmp_path / "m.json").read_text())
    _assert_summary_equals_pycocotools(ours, direct)
    assert list(ours["per_class"]) == ["triangle", "square"]
    assert "1 dataset classes the model does not have, left out of the means: extra" in err
    for false_line in ("faster-coco-eval", "AutoUpdate", "Results saved to", "Skipping labels"):  # issue 21, item 4
        assert false_line not in out + err
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images\nval: images\nnames:\n  0: x\n  1: y\n  2: z\n")
    assert cli(["eval", "--data", str(root / "data.yaml"), "--model", str(trained_checkpoint)]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ["error: the model's classes ['square', 'disc', 'triangle'] share no name with the dataset's ['x', 'y', 'z']"]
