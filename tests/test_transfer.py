"""Stock checkpoints into models with inserted attention rows: every stock tensor lands, through the stock entry points.

The stock checkpoints have random tensors (conftest.py). The expected layer mapping is derived independently of
the code under test: the target's layers minus its attention rows are, in order, the stock model's layers. Tensor
identity is checked with the published start (`EMA_YOLO_START=published`), under which nothing but the load touches
a tensor; the default function-preserving start is tested in test_start.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ema_yolo
from ema_yolo.integration import start, transfer
from ema_yolo.integration.ultralytics import YAML_LAYERS
from ema_yolo.nn import EMA

ATTENTION = tuple(YAML_LAYERS.values())


@pytest.fixture(scope="module")
def stock(tmp_path_factory, make_stock_checkpoint, stock_yolov8n_nc3):
    """name -> path of a random stock checkpoint; the file is named as Ultralytics names its release."""
    folder = tmp_path_factory.mktemp("stock")
    cfgs = {"yolov8n": "yolov8n.yaml", "yolov8s": "yolov8s.yaml", "yolov5su": "yolov5s.yaml", "yolo11s": "yolo11s.yaml"}
    paths = {name: make_stock_checkpoint(folder / f"{name}.pt", cfg) for name, cfg in cfgs.items()}
    return {**paths, "yolov8n-nc3": stock_yolov8n_nc3}


def _stock_state(path):
    from ultralytics.nn.tasks import load_checkpoint

    return {k: v for k, v in load_checkpoint(path)[0].state_dict().items() if v.is_floating_point()}


def _expected_mapping(model):
    """Stock layer index -> target index: the target's non-attention layers, in order."""
    kept = [j for j, layer in enumerate(model.model) if not isinstance(layer, ATTENTION)]
    return dict(enumerate(kept))


def _assert_every_tensor_landed(stock_state, model):
    mapping, state = _expected_mapping(model), model.state_dict()
    assert len(mapping) == 1 + max(int(k.split(".")[1]) for k in stock_state)
    for key, value in stock_state.items():
        _, index, rest = key.split(".", 2)
        assert torch.equal(state[f"model.{mapping[int(index)]}.{rest}"].float(), value), key


PAIRS = [("yolov8s", "yolov8s-ema"), ("yolov5su", "yolov5s-ema"), ("yolo11s", "yolo11s-ema"),
         ("yolov8n", "yolov8n-cbam"), ("yolov8n", "yolov8n-ca"), ("yolov8n", "yolov8n-se")]


@pytest.fixture
def published_start(monkeypatch):
    monkeypatch.setenv(start.START_ENV, "published")


@pytest.mark.parametrize("source, target", PAIRS)
def test_every_stock_tensor_lands_and_inserted_layers_keep_their_init(stock, source, target, published_start):
    from ultralytics import YOLO

    torch.manual_seed(3)
    fresh = YOLO(f"{target}.yaml").model
    torch.manual_seed(3)
    model = YOLO(f"{target}.yaml").load(stock[source]).model
    _assert_every_tensor_landed(_stock_state(stock[source]), model)
    inserted = [j for j, layer in enumerate(model.model) if isinstance(layer, ATTENTION)]
    assert len(inserted) == 2
    for j in inserted:
        for (k, a), b in zip(fresh.model[j].state_dict().items(), model.model[j].state_dict().values()):
            assert torch.equal(a, b), f"model.{j}.{k}"
    assert model.names[79] == "class79"  # every stock tensor landed: the stock class names come along, as in Ultralytics
    report = transfer.transfer_report(model)
    assert report.tensors[0] == report.tensors[1] and report.values[0] == report.values[1]
    assert [j for j, _ in report.new_layers] == inserted and report.dropped_layers == []


def test_bypassing_the_inserted_layers_gives_the_stock_detections(stock, published_start):
    # A second check of the mapping, independent of tensor names: the transferred model computes the stock function
    # (with the published start the readers keep their stock tensors, so bypassing the new layers gives it exactly).
    from ultralytics import YOLO
    from ultralytics.utils import ASSETS

    model = YOLO("yolov8n-ema.yaml").load(stock["yolov8n"])
    for j, layer in enumerate(model.model.model):
        if isinstance(layer, EMA):
            bypass = torch.nn.Identity()
            bypass.i, bypass.f, bypass.type = layer.i, layer.f, layer.type
            model.model.model[j] = bypass
    reference = YOLO(stock["yolov8n"])
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        assert torch.equal(model.model.eval()(x)[0], reference.model.eval()(x)[0])
    kwargs = dict(imgsz=160, device="cpu", conf=0.01, verbose=False)
    ours, theirs = model.predict(ASSETS / "bus.jpg", **kwargs)[0], reference.predict(ASSETS / "bus.jpg", **kwargs)[0]
    assert len(theirs.boxes) > 0
    assert torch.equal(ours.boxes.data, theirs.boxes.data)


def test_same_architecture_loads_exactly_as_stock(stock, trained_checkpoint):
    from ultralytics.nn.tasks import BaseModel, DetectionModel, load_checkpoint

    stock_load = BaseModel.load.ema_yolo_wrapped
    cases = (("yolov8n.yaml", stock["yolov8n"], 80, 3), ("yolov8n-ema.yaml", trained_checkpoint, 3, 3),
             ("yolov8n.yaml", stock["yolov8n"], 80, 1))  # a grayscale model: Ultralytics sums the RGB filters
    for cfg, pt, nc, ch in cases:
        torch.manual_seed(0)
        ours = DetectionModel(cfg, nc=nc, ch=ch, verbose=False)
        torch.manual_seed(0)
        theirs = DetectionModel(cfg, nc=nc, ch=ch, verbose=False)
        ours.load(load_checkpoint(pt)[0])
        stock_load(theirs, load_checkpoint(pt)[0])
        for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(a, b), k
        assert ours.names == theirs.names
    gray_ema = DetectionModel("yolov8n-ema.yaml", ch=1, verbose=False)
    gray_ema.load(load_checkpoint(stock["yolov8n"])[0])
    assert torch.equal(gray_ema.model[0].conv.weight, theirs.model[0].conv.weight)  # the first conv is adapted too
    assert torch.equal(gray_ema.model[0].bn.weight, theirs.model[0].bn.weight)




def test_report_line_partial_transfer_and_wrong_family(stock, ultralytics_log, published_start):
    from ultralytics import YOLO

    YOLO("yolov8n-ema.yaml").load(stock["yolov8n"])
    assert ultralytics_log == ["Transferred 298/298 stock tensors (3.2M/3.2M values); new: 2 EMA layers (model.7, model.10)"]

    ultralytics_log.clear()
    p2 = YOLO("yolov8s-p2-ema.yaml").load(stock["yolov8s"]).model  # a P2 head: the backbone and the top of the neck
    report = transfer.transfer_report(p2)
    stock_state, state = _stock_state(stock["yolov8s"]), p2.state_dict()
    for key, value in stock_state.items():
        if int(key.split(".")[1]) <= 9:  # the backbone keeps its indices (no attention row before model.9)
            assert torch.equal(state[key], value), key
    assert ("Detect" in {t for _, t in report.new_layers}) and (22, "Detect") in report.dropped_layers
    assert 0.5 < report.values[0] / report.values[1] < 1 and report.body_share > 0.5
    assert len(ultralytics_log) == 1 and "not transferred: 5 C2f/Conv/Detect layers (model.16, model.18, model.19, model.21, model.22)" in ultralytics_log[0]

    ultralytics_log.clear()
    YOLO("yolo11n-ema.yaml").load(stock["yolov8n"])
    assert any("Only" in line and "same family and scale" in line for line in ultralytics_log)


def test_attention_checkpoint_into_the_stock_yaml_drops_only_the_attention(trained_checkpoint):
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml").load(trained_checkpoint).model  # 3 classes into an 80-class head: its last convs differ
    report = transfer.transfer_report(model)
    assert report.dropped_layers == [(7, "EMA"), (10, "EMA")] and report.new_layers == []
    source, state = _stock_state(trained_checkpoint), model.state_dict()
    for key, value in source.items():
        index = int(key.split(".")[1])
        if index not in (7, 10) and not (key.startswith("model.24.cv3.") and ".2." in key):
            target = f"model.{index - (index > 7) - (index > 10)}.{key.split('.', 2)[2]}"
            assert torch.equal(state[target], value), key


@pytest.mark.parametrize("source, target", PAIRS)
def test_pretrained_path_through_the_training_api(stock, tiny_dataset, tmp_path, source, target, published_start):
    # `yolo train model=Y pretrained=P` runs YOLO(Y).train(pretrained=P): the model the trainer is about to train
    # holds every stock tensor but the 80-class head's last convolutions (the data has 3 classes).
    from ultralytics import YOLO

    seen = {}

    class Stop(Exception):
        pass

    def snapshot(trainer):  # before any step
        seen["state"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        seen["model"] = trainer.model
        raise Stop

    model = YOLO(f"{target}.yaml")
    model.add_callback("on_pretrain_routine_end", snapshot)
    with pytest.raises(Stop):
        model.train(data=str(tiny_dataset), pretrained=str(stock[source]), epochs=1, imgsz=64, batch=8,
                    device="cpu", workers=0, amp=False, plots=False, project=str(tmp_path), name="api")
    mapping, class_convs = _expected_mapping(seen["model"]), []
    for key, value in _stock_state(stock[source]).items():
        _, index, rest = key.split(".", 2)
        target_key = f"model.{mapping[int(index)]}.{rest}"
        if seen["state"][target_key].shape != value.shape:
            class_convs.append(rest)
            continue
        assert torch.equal(seen["state"][target_key].float(), value), key
    assert sorted(class_convs) == sorted(f"cv3.{i}.2.{p}" for i in range(3) for p in ("weight", "bias"))


def test_pretrained_path_through_the_stock_cli_in_a_fresh_process(stock, tiny_dataset, tmp_path):
    yolo = Path(sys.executable).with_name("yolo")
    proc = subprocess.run(
        [str(yolo), "train", "model=yolov8n-ema.yaml", f"data={tiny_dataset}", f"pretrained={stock['yolov8n-nc3']}",
         "epochs=1", "imgsz=64", "batch=8", "device=cpu", "workers=0", "amp=False", "plots=False", "val=False",
         f"project={tmp_path}", "name=cli"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Transferred 298/298 stock tensors (3.0M/3.0M values); new: 2 EMA layers (model.7, model.10)" in (
        proc.stdout + proc.stderr
    )


def test_self_check_fails_loudly_if_the_loading_path_changes(monkeypatch):
    from ultralytics.nn import tasks

    monkeypatch.setattr(tasks.BaseModel, "load", lambda self, weights, verbose=True: self)  # loads nothing
    with pytest.raises(RuntimeError, match=r"cannot hook into ultralytics .*loading pretrained weights"):
        ema_yolo.register()


def test_registration_is_silent_and_independent_of_the_start_variable(tmp_path):
    # The self-checks run at every `import ultralytics`: they must not log, and a typo in EMA_YOLO_START must only
    # fail the load that would use it, never the registration.
    code = "from ultralytics import YOLO; YOLO('yolov8n.yaml'); YOLO('yolov8n-ema.yaml')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, start.START_ENV: "publishd"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "EMA:" not in proc.stdout + proc.stderr and "ema-yolo" not in proc.stdout + proc.stderr
