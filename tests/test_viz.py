"""`ema-yolo attention`: recorded maps against the layers' own outputs (forward hooks), files written, bad input."""

import cv2
import numpy as np
import pytest
import torch

from ema_yolo.cli import main as cli
from ema_yolo.nn import CA, CBAM, EMA
from ema_yolo.viz.maps import AttentionRecorder


def _record(yaml, kind, shape):
    """Run a model with random normalisation parameters (non-trivial gates) once under the recorder; the oracle,
    apart from the recorder: (input, output) of every `kind` layer from plain forward hooks."""
    from ultralytics import YOLO

    model, seen = YOLO(yaml).model.eval(), {}
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm2d)):
            torch.nn.init.normal_(m.weight, 1, 0.5), torch.nn.init.normal_(m.bias, 0, 0.5)
        if type(m) is kind:
            m.register_forward_hook(lambda m, args, out: seen.__setitem__(m.i, (args[0], out)))
    with torch.no_grad(), AttentionRecorder(model) as recorder:
        model(torch.rand(shape))
    return model, seen, recorder


def test_ema_map_is_the_modules_own_weights():
    model, seen, recorder = _record("yolov8n-ema.yaml", EMA, (2, 3, 64, 96))
    assert sorted(recorder.maps) == ["10 EMA", "7 EMA"] and recorder.input.shape == (2, 3, 64, 96)
    for i, (x, out) in seen.items():
        ema = model.model[i]
        b, c, h, w = x.shape
        # out = x * weight, one weight per group and pixel: the least-squares ratio over the group's channels
        xg, og = x.view(b, ema.groups, c // ema.groups, h, w), out.view(b, ema.groups, c // ema.groups, h, w)
        weights = (og * xg).sum(2) / xg.square().sum(2)
        recorded = recorder.maps[f"{i} EMA"]
        assert recorded.shape == (b, ema.groups, h, w)
        assert torch.allclose(recorded, weights, atol=1e-5)
        assert weights.std() > 1e-3  # the weights vary over pixels and groups: the comparison means something


def test_ca_and_cbam_maps_are_their_gates():
    _, seen, recorder = _record("yolov8n-ca.yaml", CA, (1, 3, 64, 64))
    for i, (x, out) in seen.items():
        mask = x.abs() > 1e-2
        assert torch.allclose(recorder.maps[f"{i} CA"][mask], (out / x)[mask], atol=1e-4)  # out = x * g_h * g_w
    _, seen, recorder = _record("yolov8n-cbam.yaml", CBAM, (1, 3, 64, 64))
    for i, (x, out) in seen.items():
        # out = x * channel gate (per channel) * spatial gate (per pixel): out / (x * map) is constant per channel
        ratio = out / (x * recorder.maps[f"{i} CBAM"])
        mask = x.abs() > 1e-2
        spread = (ratio - ratio.median(-1, keepdim=True).values.median(-2, keepdim=True).values).abs()
        assert spread[mask].max() < 1e-3


def _images(folder, n=2):
    from ema_yolo.data.synth import make_scene

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"scene{i}.jpg"), make_scene(rng, 96, 64)[0])
    return folder


def test_attention_command_writes_layers_and_sheets(trained_checkpoint, tmp_path):
    source = _images(tmp_path / "images")
    out = tmp_path / "out"
    args = ["attention", "--model", str(trained_checkpoint), "--model", "yolov8n.yaml", "--source", str(source),
            "--out", str(out), "--imgsz", "64"]
    assert cli(args) == 0
    expected = {"run": ["eigencam", "layer07-EMA", "layer10-EMA"], "yolov8n": ["eigencam"]}  # run/weights/best.pt
    for stem in ("scene0", "scene1"):
        for model, files in expected.items():
            assert sorted(p.stem for p in (out / stem / model).iterdir()) == files
        sheet = cv2.imread(str(out / f"{stem}-sheet.png"))
        single = cv2.imread(str(out / stem / "run" / "layer07-EMA.png"))
        assert sheet.shape[1] > 1.8 * single.shape[1] and sheet.shape[0] > 3.5 * single.shape[0]  # 2 models x 4 rows
    assert sorted(p.name for p in out.iterdir()) == ["scene0", "scene0-sheet.png", "scene1", "scene1-sheet.png"]
    assert cli(args) == 1  # never replaces OUT without --overwrite


def test_explained_layers_strides_and_se(tmp_path):
    from ultralytics import YOLO

    from ema_yolo.viz.commands import explain_image

    image = cv2.imread(str(_images(tmp_path / "images", 1) / "scene0.jpg"))  # 96 x 64
    ema = explain_image(YOLO("yolov8n-ema.yaml"), image, imgsz=64)
    assert ema["strides"] == {"7 EMA": 16, "10 EMA": 32}  # after the P4/16 and P5/32 backbone blocks
    assert {name: m.shape for name, m in ema["layers"].items()} == {"7 EMA": (64, 96), "10 EMA": (64, 96)}
    assert ema["eigencam"].shape == (64, 96) and 0 <= ema["eigencam"].min() <= ema["eigencam"].max() <= 1
    se = explain_image(YOLO("yolov8n-se.yaml"), image, imgsz=64)
    assert se["layers"] == {"7 SE": None, "10 SE": None} and se["strides"] == {}  # drawn as "no spatial map"
    eca = explain_image(YOLO("yolov8n-eca.yaml"), image, imgsz=64)
    assert eca["layers"] == {"7 ECA": None, "10 ECA": None} and eca["strides"] == {}


def test_attention_command_draws_eca_as_channel_only(tmp_path):
    source, out = _images(tmp_path / "images", 1), tmp_path / "out"
    assert cli(["attention", "--model", "yolov8n-eca.yaml", "--source", str(source), "--out", str(out), "--imgsz", "64"]) == 0
    assert sorted(p.stem for p in (out / "scene0" / "yolov8n-eca").iterdir()) == ["eigencam", "layer07-ECA", "layer10-ECA"]


@pytest.mark.parametrize("case", ["corrupt", "missing", "model", "classify"])
def test_attention_bad_input_names_the_file(case, tmp_path, capsys):
    source = _images(tmp_path / "images")
    model = "yolov8n-ema.yaml"
    if case == "corrupt":
        (source / "broken.png").write_bytes(b"\x89PNG not really")
        culprit = source / "broken.png"
    elif case == "missing":
        culprit = source = tmp_path / "nope.jpg"
    elif case == "model":
        culprit = model = tmp_path / "gone.pt"
    else:  # every task but classification has a detection-style head to explain
        culprit = model = "yolov8n-cls-ema.yaml"
    assert cli(["attention", "--model", str(model), "--source", str(source), "--out", str(tmp_path / "out"), "--imgsz", "64"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {culprit}: ") and "\n" not in err
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


IN_BLOCK = ["yolov8n-c2f-ema.yaml", "yolo11n-c3k2-ema.yaml", "yolo11n-c3k2-ca.yaml", "yolov5n-c3-se.yaml",
            "yolov5n-c3-cbam.yaml"]  # fmt: skip


@pytest.mark.parametrize("yaml", IN_BLOCK)
def test_in_block_layers_are_named_by_row_and_path(yaml, tmp_path):
    from ultralytics import YOLO

    from ema_yolo.nn.csp_attn import AttnBottleneck
    from ema_yolo.viz.commands import explain_image

    image = cv2.imread(str(_images(tmp_path / "images", 1) / "scene0.jpg"))  # 96 x 64
    model = YOLO(yaml)
    # oracle: every bottleneck's attention layer, by the row of the block that holds it, and that row's output size
    expected, sizes = {}, {}
    for path, m in model.model.named_modules():
        if isinstance(m, AttnBottleneck):
            row, rest = path.split(".", 2)[1:]
            expected[f"{row}.{rest}.attn {type(m.attn).__name__}"] = int(row)
    for row in set(expected.values()):
        model.model.model[row].register_forward_hook(lambda m, a, out, row=row: sizes.__setitem__(row, out.shape[-2]))
    out = explain_image(model, image, imgsz=64)
    assert len(expected) >= 10 and set(out["layers"]) == set(expected)
    spatial = {name: 64 // sizes[row] for name, row in expected.items() if not name.endswith(" SE")}
    assert out["strides"] == spatial
    assert all(out["layers"][n] is None for n in expected if n.endswith(" SE"))
    assert all(out["layers"][n].shape == (64, 96) for n in spatial)


@pytest.mark.parametrize("task", ["detect", "segment", "pose", "obb"])
def test_every_detection_style_task_is_explained(task, tmp_path):
    from ultralytics import YOLO

    from ema_yolo.viz.commands import explain_image

    yaml = {"detect": "yolov8n-ema.yaml", "segment": "yolov8n-seg-ema.yaml", "pose": "yolov8n-pose-ema.yaml",
            "obb": "yolo11n-obb-ema.yaml"}[task]  # fmt: skip
    image = cv2.imread(str(_images(tmp_path / "images", 1) / "scene0.jpg"))  # 96 x 64
    model = YOLO(yaml)
    out = explain_image(model, image, imgsz=64, conf=0.0)  # random weights: every candidate is drawn
    oracle = model.predict(image, imgsz=64, conf=0.0, verbose=False)[0]
    boxes = oracle.obb if task == "obb" else oracle.boxes  # OBB results have no `boxes`
    assert out["count"] == len(boxes) > 0 and sum(n for n, _ in out["classes"].values()) == out["count"]
    assert out["detections"].shape == image.shape and out["strides"] == {"7 EMA": 16, "10 EMA": 32}


def test_models_are_labelled_apart(trained_checkpoint, stock_yolov8n_nc3, tmp_path):
    import shutil

    from ema_yolo.viz.commands import _load_models

    runs = []
    for project, checkpoint in (("a", trained_checkpoint), ("b", stock_yolov8n_nc3), ("c", trained_checkpoint)):
        (tmp_path / project / "train" / "weights").mkdir(parents=True)
        runs.append(shutil.copy(checkpoint, tmp_path / project / "train" / "weights" / "best.pt"))
    # Ultralytics' default run name says nothing: the YAML stem; a unique run name stays; collisions get -<position>
    assert [label for label, _ in _load_models([runs[0], trained_checkpoint])] == ["yolov8n-ema", "run"]
    assert [label for label, _ in _load_models(runs)] == ["yolov8n-ema", "yolov8n", "yolov8n-ema-3"]


def test_sheet_layout_follows_the_model_count(tmp_path):
    source = _images(tmp_path / "images", 1)
    # one model: detections, EigenCAM and its two EMA layers in a 2 x 2 grid
    assert cli(["attention", "--model", "yolov8n-ema.yaml", "--source", str(source), "--out", str(tmp_path / "one"),
                "--imgsz", "64"]) == 0  # fmt: skip
    h, w = cv2.imread(str(tmp_path / "one" / "scene0" / "yolov8n-ema" / "eigencam.png")).shape[:2]
    sheet = cv2.imread(str(tmp_path / "one" / "scene0-sheet.png"))
    assert 1.5 * w < sheet.shape[1] < 2.5 * w and 1.5 * h < sheet.shape[0] < 2.5 * h
    # an in-block model next to an OBB model: one column each, one row per panel of the longer one
    assert cli(["attention", "--model", "yolov5n-c3-se.yaml", "--model", "yolo11n-obb-ema.yaml", "--source",
                str(source), "--out", str(tmp_path / "two"), "--imgsz", "64"]) == 0  # fmt: skip
    in_block = sorted(p.stem for p in (tmp_path / "two" / "scene0" / "yolov5n-c3-se").iterdir())
    assert len(in_block) == 12 and "layer02.m.0.attn-SE" in in_block and "layer04.m.1.attn-SE" in in_block
    assert sorted(p.stem for p in (tmp_path / "two" / "scene0" / "yolo11n-obb-ema").iterdir()) == [
        "eigencam", "layer07-EMA", "layer10-EMA"]  # fmt: skip
    sheet = cv2.imread(str(tmp_path / "two" / "scene0-sheet.png"))
    assert 1.5 * w < sheet.shape[1] < 2.5 * w and 12.5 * h < sheet.shape[0] < 13.5 * h  # 11 layers + 2 rows
