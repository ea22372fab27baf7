"""Exports: EMA's export-time forward, its selection by Ultralytics' exporter, and the cheap formats of the export
matrix (`ema-yolo check-exports`) against PyTorch on Ultralytics' own sample photos, 64 px."""

import copy
from pathlib import Path

import pytest
import torch

from ema_yolo.export.check import CASES, check_case, describe_exit, onnx2tf_sample, report, run_cases
from ema_yolo.export.commands import main
from ema_yolo.export.compare import match_boxes, raw_error
from ema_yolo.nn import EMA, EMAReference
from ema_yolo.nn.ema_export import ema_export_forward, export_weights

IMGSZ = 64


def _export_forward(ema, x):
    weights = export_weights(ema.groups, ema.gn, ema.conv1x1, ema.conv3x3)
    return ema_export_forward(x, ema.groups, ema.group_channels, ema.gn.eps, weights)


@pytest.mark.parametrize("channels, shape", [(64, (2, 8, 8)), (128, (3, 5, 7)), (48, (1, 4, 9)), (16, (2, 1, 6))])
def test_export_forward_equals_training_forward_float64(channels, shape):
    torch.manual_seed(channels)
    ema = EMA(channels).double()
    for p in ema.parameters():  # not the default init: every term of the equations must matter
        torch.nn.init.normal_(p)
    reference = EMAReference(channels, ema.groups).double()
    reference.load_state_dict(ema.state_dict())
    x = torch.randn(shape[0], channels, *shape[1:], dtype=torch.float64)
    trained = ema(x)
    exported = _export_forward(ema, x)
    ema.export = True  # the switch Ultralytics' exporter flips through the callback
    assert torch.allclose(ema(x), exported, atol=0, rtol=0)
    assert not any(k.startswith("export") for k in ema.state_dict())  # the snapshot is not saved with the weights
    ema.export = False
    assert torch.equal(ema(x), trained) and not list(ema.buffers())
    assert torch.allclose(exported, trained, atol=1e-12, rtol=0)
    assert torch.allclose(exported, reference(x), atol=1e-12, rtol=0)


def test_export_flag_keeps_the_layer_live():
    # With the flag set (a user may set it, and a checkpoint saved then keeps it), eager calls still train and follow
    # new weights, the snapshot a traced graph reads follows `load_state_dict`, and another input dtype works.
    torch.manual_seed(0)
    ema, other = EMA(64), EMA(64)
    for p in other.parameters():
        torch.nn.init.normal_(p)
    ema.export = True
    x = torch.randn(2, 64, 8, 8)
    ema(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ema.parameters())
    ema.load_state_dict(other.state_dict())
    traced = torch.jit.trace(ema, x)
    assert torch.allclose(traced(x), other(x), atol=1e-5) and torch.allclose(ema(x), other(x), atol=1e-5)
    assert ema(x.double()).dtype == torch.float64


def test_export_forward_stays_accurate_in_float16_at_large_activations():
    # float16 exports run this graph in float16: squared deviations past 256 would overflow the variance to inf
    torch.manual_seed(0)
    ema = EMA(64)
    x = torch.randn(1, 64, 20, 20, dtype=torch.float64) * 300
    want = _export_forward(copy.deepcopy(ema).double(), x)
    got = _export_forward(ema.half(), x.half()).double()
    assert got.isfinite().all()
    assert (got - want).abs().max() / want.abs().max() < 2e-2  # 1.0e-2 measured; 0.55 with the plain variance


def test_export_forward_takes_every_convolution_weight_as_a_constant():
    # LiteRT converts torch.export's program; a weight computed in the graph (the tiled shared weight) is an
    # activation to its int8 quantiser, which then gives it a zero point that TFLite's int8 convolution refuses
    ema = EMA(64).eval()
    ema.export = True
    program = torch.export.export(ema, (torch.randn(1, 64, 8, 8),)).run_decompositions()
    signature = program.graph_signature
    constants = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    convs = [n for n in program.graph.nodes if n.target == torch.ops.aten.convolution.default]
    assert len(convs) == 4  # the two 1x1 gates, the 3x3 branch, the group sum
    assert all(constants.get(n.args[1].name, "").startswith("export_") for n in convs), [n.args[1] for n in convs]


def test_exporter_switches_the_exported_copy_only(tmp_path, monkeypatch):
    from ultralytics import YOLO
    from ultralytics.utils.callbacks.base import default_callbacks

    from ema_yolo.integration.ultralytics import _export_mode

    assert _export_mode in default_callbacks["on_export_start"]
    monkeypatch.chdir(tmp_path)  # the export is written next to the model
    model = YOLO("yolov8n-ema.yaml")
    seen = []
    model.add_callback("on_export_start", lambda e: seen.extend(m.export for m in e.model.modules() if isinstance(m, EMA)))
    model.export(format="torchscript", imgsz=IMGSZ)
    assert seen == [True, True]  # yolov8n-ema has two EMA layers; Ultralytics' default callbacks run first
    assert not any(m.export for m in model.model.modules() if isinstance(m, EMA))  # training model untouched


def test_raw_error_and_box_matching_by_hand():
    ref = torch.zeros(1, 6, 3)  # 4 box rows + 2 classes, 3 anchors
    ref[0, :4] = torch.tensor([[50.0, 20, 5], [50, 20, 5], [20, 10, 2], [20, 10, 2]])  # xywh
    ref[0, 4:] = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.6, 0.255]])
    out = ref.clone()
    out[0, 0, 0] += 1.28  # box error 1.28 / 64 px = 2e-2; IoU of the 20 px boxes 18.72 * 20 / (800 - 18.72 * 20)
    out[0, 5, 2] -= 0.01  # a score just above conf drops below it: tolerated inside the margin
    errors = raw_error(out, ref, 64)
    assert errors["box"] == pytest.approx(2e-2) and errors["score"] == pytest.approx(1e-2)
    assert errors["raw"] == pytest.approx(2e-2)
    assert match_boxes(out, ref, conf=0.25, min_iou=0.85) == {"boxes": 3, "matched": 2, "flips": 0, "unmatched": 0}
    assert match_boxes(out, ref, conf=0.25, min_iou=0.95)["unmatched"] == 2  # IoU 374.4 / 425.6 = 0.88 each way
    moved = ref.clone()
    moved[0, 0, 1] += 10  # the class-1 box at (20, 20) moves by its width: no twin, on both sides
    assert match_boxes(moved, ref, conf=0.25)["unmatched"] == 2
    with pytest.raises(ValueError, match="shape"):
        raw_error(out[..., :2], ref, 64)


def test_nms_order_flips_are_told_apart_from_different_boxes():
    ref = torch.zeros(1, 5, 2)  # two overlapping boxes (IoU 380 / 420) of one class, scores 0.800 and 0.795
    ref[0, :4] = torch.tensor([[50.0, 51], [50, 50], [20, 20], [20, 20]])
    ref[0, 4] = torch.tensor([0.800, 0.795])
    out = ref.clone()
    out[0, 4] = torch.tensor([0.795, 0.800])  # NMS now keeps the other one
    assert match_boxes(out, ref) == {"boxes": 1, "matched": 0, "flips": 2, "unmatched": 0}
    out[0, 4] = torch.tensor([0.70, 0.80])  # PyTorch's kept box scores 0.1 less here: a real difference
    assert match_boxes(out, ref) == {"boxes": 1, "matched": 0, "flips": 1, "unmatched": 1}


def test_describe_exit():
    assert describe_exit(0) == "ok"
    assert describe_exit(-11) == describe_exit(139) == "crashed (SIGSEGV)"
    assert describe_exit(-6) == "crashed (SIGABRT)"
    assert describe_exit(2) == "exit 2"


@pytest.fixture(scope="module")
def spread_checkpoint(tmp_path_factory):
    """A yolov8n-ema checkpoint built from its YAML with class biases drawn so that NMS keeps many boxes."""
    from ultralytics import YOLO
    from ultralytics.utils import ASSETS

    from ema_yolo.export.compare import load_images

    torch.manual_seed(0)
    model = YOLO("yolov8n-ema.yaml")
    for m in model.model.modules():  # BatchNorm statistics of real photos: features that vary across anchors
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        model.model.train()(load_images([ASSETS / "bus.jpg", ASSETS / "zidane.jpg"], 128))
    for branch in model.model.model[-1].cv3:
        torch.nn.init.normal_(branch[-1].bias, -2.0, 1.0)
    path = tmp_path_factory.mktemp("ckpt") / "yolov8n-ema.pt"
    model.save(path)
    return str(path)


@pytest.fixture(scope="module")
def photos():
    from ultralytics.utils import ASSETS

    return [str(ASSETS / "bus.jpg"), str(ASSETS / "zidane.jpg")]


def test_cheap_formats_match_pytorch_each_in_its_own_process(spread_checkpoint, photos, tmp_path):
    names = ["onnx-dynamic", "openvino", "ncnn"]  # TorchScript and static ONNX: tests/test_integration.py
    # 128 px: random weights amplify rounding; NCNN's Winograd convolutions differ from PyTorch by 1.5e-3 at 64 px
    # and 9e-5 at 128 px, for the stock yolov8n as for yolov8n-ema
    spec = {"model": spread_checkpoint, "images": photos, "imgsz": 128, "second_size": 96, "conf": 0.25}
    rows = {r["case"]: r for r in run_cases(names, spec, tmp_path)}
    for name in names:
        assert rows[name]["status"] == "match", (name, rows[name])
        for size, r in rows[name]["sizes"].items():
            assert r["raw"] < 1e-3 and r["boxes"] > 10 and r["unmatched"] == 0, (name, size, r)
            assert r["matched"] + r["flips"] >= r["boxes"], (name, size, r)
    assert list(rows["onnx-dynamic"]["sizes"]) == ["128", "96"]  # a dynamic export also runs at another size
    table = report(list(rows.values()))
    assert table.count("| match |") == len(names)


@pytest.mark.parametrize("attention", ["cbam", "ca", "se"])
def test_attention_twins_export_to_onnx(attention, photos, tmp_path):
    from ultralytics import YOLO

    model = tmp_path / f"yolov8n-{attention}.pt"
    YOLO(f"yolov8n-{attention}.yaml").save(model)
    result = check_case("onnx", model, photos, IMGSZ, tmp_path / "out")
    assert result["sizes"][IMGSZ]["raw"] < 1e-3


def test_failures_are_reported_per_case(tmp_path, photos, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_text("not a checkpoint")
    spec = {"model": str(broken), "images": photos, "imgsz": IMGSZ}
    [row, unavailable] = run_cases(["onnx", "engine"], spec, tmp_path / "out")
    assert row["status"].startswith("FAILED: exit 1 during export"), row
    assert unavailable["status"] == "not run: TensorRT needs an NVIDIA GPU"
    assert main([str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.jpg: no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([photos[0], "--formats", "onnx,tensorrt"])
    assert set(CASES) >= {"torchscript", "onnx", "openvino", "ncnn", "mnn", "paddle", "litert"}


def test_onnx2tf_sample_is_made_from_the_given_photos(photos, tmp_path):
    # Ultralytics skips its download of this file when it exists: the TensorFlow exports then run offline
    import cv2
    import numpy as np
    from ultralytics.utils.export import tensorflow

    path = onnx2tf_sample(photos, tmp_path)
    assert f'Path("{path.name}")' in Path(tensorflow.__file__).read_text()  # the name Ultralytics looks for
    sample = np.load(path)
    assert sample.shape == (20, 128, 128, 3) and sample.dtype == np.float32
    assert np.array_equal(sample[0], sample[2]) and not np.array_equal(sample[0], sample[1])  # two photos, cycled
    bus = cv2.imread(photos[0])  # 810 x 1080 portrait: resized to 96 x 128, padded 16 px each side with grey 114
    assert np.allclose(sample[0][:, 16:112], cv2.resize(bus, (96, 128))[..., ::-1] / 255, atol=1e-6)
    assert np.allclose(sample[0][:, :16], 114 / 255) and np.allclose(sample[0][:, 112:], 114 / 255)
