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


@pytest.mark.parametrize("case", ["corrupt", "missing", "model"])
def test_attention_bad_input_names_the_file(case, tmp_path, capsys):
    source = _images(tmp_path / "images")
    model = "yolov8n-ema.yaml"
    if case == "corrupt":
        (source / "broken.png").write_bytes(b"\x89PNG not really")
        culprit = source / "broken.png"
    elif case == "missing":
        culprit = source = tmp_path / "nope.jpg"
    else:
        culprit = model = tmp_path / "gone.pt"
    assert cli(["attention", "--model", str(model), "--source", str(source), "--out", str(tmp_path / "out"), "--imgsz", "64"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {culprit}: ") and "\n" not in err
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
