"""The function-preserving start of attention inserted into a stock checkpoint, and `freeze=N` counting stock layers.

The oracle for the start is the stock network itself: its raw head outputs on the same input, computed by Ultralytics'
stock model from the same checkpoint. With the published initialisation they differ by about 60% whatever the
weights, so the comparison can fail.
"""

import subprocess
import sys

import pytest
import torch

from ema_yolo.integration import start
from ema_yolo.nn import ATTENTION_TYPES, CA, CBAM, ECA, EMA, SE
from ema_yolo.nn.csp_attn import AttnBottleneck

ATTENTION = ATTENTION_TYPES
TOLERANCE = 1e-5  # max |a - b| / max |a| over the raw outputs; measured 0.0 on the real YOLOv8s (docs/reproducing.md)
VARIANTS = [("yolov8n", f"yolov8n-{v}") for v in ("ema", "cbam", "ca", "se", "c2f-ema", "c2f-cbam", "c2f-ca", "c2f-se")]
VARIANTS += [("yolov5nu", "yolov5n-c3-ema"), ("yolo11n", "yolo11n-c3k2-ca"), ("yolo11n", "yolo11n-ema")]
VARIANTS += [("yolov8n", "yolov8n-eca"), ("yolov8n", "yolov8n-c2f-eca")]


@pytest.fixture(scope="module")
def stocks(tmp_path_factory, make_stock_checkpoint, tiny_dataset):
    """Stock checkpoints: random tensors per family, and a yolov8n trained 2 epochs on the generated set."""
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("stock")
    cfgs = {"yolov8n": "yolov8n.yaml", "yolov5nu": "yolov5n.yaml", "yolo11n": "yolo11n.yaml"}
    random = {name: make_stock_checkpoint(folder / f"{name}.pt", cfg, nc=3) for name, cfg in cfgs.items()}
    YOLO("yolov8n.yaml").train(data=str(tiny_dataset), epochs=2, imgsz=64, batch=8, device="cpu", workers=0,
                               amp=False, plots=False, val=False, project=str(folder), name="trained", verbose=False)
    return {"random": random, "trained": folder / "trained" / "weights" / "last.pt"}




def _raw(model, x):
    """The head's raw outputs (box distributions and class logits at every anchor, before decoding), flattened."""
    with torch.no_grad():
        raw = model.eval()(x)[1]
    return torch.cat((raw["boxes"].flatten(1), raw["scores"].flatten(1)), 1)


def _difference(cfg, checkpoint, x):
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    stock = load_checkpoint(checkpoint)[0].float()
    model = DetectionModel(cfg, nc=len(stock.names), verbose=False)
    model.load(load_checkpoint(checkpoint)[0], verbose=False)
    reference = _raw(stock, x)
    return float((_raw(model, x) - reference).abs().max() / reference.abs().max()), model


@pytest.mark.parametrize("source, target", VARIANTS)
def test_start_keeps_the_stock_raw_outputs(stocks, source, target, monkeypatch):
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    checkpoints = [stocks["random"][source]] + ([stocks["trained"]] if source == "yolov8n" else [])
    for checkpoint in checkpoints:
        difference, model = _difference(f"{target}.yaml", checkpoint, x)
        assert difference <= TOLERANCE, (checkpoint, difference)
        assert any(isinstance(m, ATTENTION) for m in model.modules())
    monkeypatch.setenv(start.START_ENV, "published")  # the oracle can tell: the published start changes the function
    assert _difference(f"{target}.yaml", checkpoints[0], x)[0] > 0.05


def test_start_changes_only_the_readers_by_the_inverse_gate_and_the_gates_learn(stocks):
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    stock = load_checkpoint(stocks["trained"])[0].float()
    model = DetectionModel("yolov8n-cbam.yaml", nc=3, verbose=False)
    model.load(load_checkpoint(stocks["trained"])[0], verbose=False)
    # CBAM rows at model.7 (after model.6, 128 channels) and model.10 (after model.8, 256 channels). Their readers:
    # model.8 (Conv), model.11 (SPPF's cv1) and, through the Concat model.13 (Upsample of model.12, 256 channels,
    # then model.7), model.14's cv1 on its channels 256-383. Each takes 1 / 0.25 = 4 on those channels, exactly.
    readers = {"model.8.conv.weight": slice(None), "model.11.cv1.conv.weight": slice(None),
               "model.14.cv1.conv.weight": slice(256, 384)}
    state, stock_state = model.state_dict(), stock.state_dict()
    mapping = [j for j, layer in enumerate(model.model) if not isinstance(layer, ATTENTION)]
    for key, value in stock_state.items():
        if not value.is_floating_point():
            continue
        _, index, rest = key.split(".", 2)
        target = f"model.{mapping[int(index)]}.{rest}"
        if target in readers:
            expected = value.clone()
            expected[:, readers[target]] *= 4
            assert torch.equal(state[target], expected), key
        else:
            assert torch.equal(state[target], value), key
    # the gates are constant 0.5 and learn: every parameter the gate output depends on directly gets a gradient
    model.train()
    for layer in (model.model[7], model.model[10]):
        assert not layer.fc2.weight.any() and not layer.spatial.weight.any()
    raw = model(torch.rand(2, 3, 64, 64))  # training mode: the raw outputs
    (raw["boxes"].sum() + raw["scores"].sum()).backward()
    for layer in (model.model[7], model.model[10]):
        assert layer.fc2.weight.grad.abs().sum() > 0 and layer.spatial.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("layer", [EMA(64), CBAM(64), CA(64), SE(64), ECA(64)], ids=lambda m: type(m).__name__)
def test_constant_gate_is_the_gain_it_reports_and_stays_trainable(layer):
    x = torch.randn(2, 64, 12, 10, dtype=torch.float64)
    layer = layer.double()
    gain = layer.constant_gate_()
    out = layer(x.requires_grad_())
    torch.testing.assert_close(out, gain * x, rtol=0, atol=1e-12)
    (out * torch.randn_like(out)).sum().backward()
    trained = {"EMA": ("gn.weight", "conv3x3.weight"), "CBAM": ("fc2.weight", "spatial.weight"),
               "CA": ("conv_h.weight", "conv_w.weight"), "SE": ("fc2.weight", "fc2.bias"), "ECA": ("conv.weight",)}[type(layer).__name__]
    params = dict(layer.named_parameters())
    assert all(params[name].grad.abs().sum() > 0 for name in trained)


def test_in_block_gain_reloads_from_state_dict_and_checkpoint(stocks, tmp_path):
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    model = DetectionModel("yolov8n-c2f-ema.yaml", nc=3, verbose=False)
    model.load(load_checkpoint(stocks["trained"])[0], verbose=False)
    blocks = [m for m in model.modules() if isinstance(m, AttnBottleneck)]
    assert blocks and all(b.gain == 2.0 for b in blocks)
    fresh = DetectionModel("yolov8n-c2f-ema.yaml", nc=3, verbose=False)  # from scratch: published, gain 1
    assert all(b.gain == 1.0 for b in fresh.modules() if isinstance(b, AttnBottleneck))
    fresh.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(_raw(fresh, x), _raw(model, x))
    torch.save({"model": model}, tmp_path / "ft.pt")
    assert torch.equal(_raw(torch.load(tmp_path / "ft.pt", weights_only=False)["model"], x), _raw(model, x))


def test_from_scratch_keeps_the_published_initialisation():
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n-c2f-ema.yaml", nc=3, verbose=False)
    emas = [m for m in model.modules() if isinstance(m, EMA)]
    assert emas and all(bool((m.gn.weight == 1).all()) and bool(m.conv3x3.weight.any()) for m in emas)
    model = DetectionModel("yolov8n-se.yaml", nc=3, verbose=False)
    assert all(m.fc2.weight.any() for m in model.modules() if isinstance(m, SE))


def test_a_reader_that_cannot_absorb_keeps_the_published_start(ultralytics_log):
    from ultralytics.nn.tasks import BaseModel, parse_model

    def build(rows):
        model = BaseModel()
        model.model, model.save = parse_model({"nc": 1, "backbone": rows, "head": []}, ch=3, verbose=False)
        return model

    conv = [-1, 1, "Conv", [16, 3, 2]]
    source = build([conv, conv, [-1, 1, "nn.BatchNorm2d", [16]]])
    target = build([conv, conv, [-1, 1, "EMA", ["c2"]], [-1, 1, "nn.BatchNorm2d", [16]]])  # BatchNorm adds a shift
    target.load(source)
    assert any("model.2: no function-preserving start, model.3 (BatchNorm2d)" in line for line in ultralytics_log)
    assert bool((target.model[2].gn.weight == 1).all())  # published: GroupNorm scale 1
    assert torch.equal(target.model[3].weight, source.model[2].weight)  # the reader was restored


def test_start_variable(stocks, monkeypatch):
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    monkeypatch.setenv(start.START_ENV, "publishd")
    with pytest.raises(ValueError, match="EMA_YOLO_START='publishd'"):
        DetectionModel("yolov8n-ema.yaml", nc=3, verbose=False).load(load_checkpoint(stocks["trained"])[0])
    monkeypatch.delenv(start.START_ENV)
    monkeypatch.setenv("EMA_YOLO_INIT", "identity")  # the replaced variable: an error, not a silent opposite
    with pytest.raises(ValueError, match="EMA_YOLO_START=published"):
        DetectionModel("yolov8n-ema.yaml", nc=3, verbose=False).load(load_checkpoint(stocks["trained"])[0])


def _frozen_after_setup(trainer):
    return {k.split(".")[1] + ("" if ".attn." not in k else ".attn") for k, v in trainer.model.named_parameters()
            if not v.requires_grad and ".dfl" not in k}  # fmt: skip


def test_freeze_counts_stock_layers_through_train(tiny_dataset, stocks, tmp_path, ultralytics_log):
    from ultralytics import YOLO

    seen = {}

    def record(trainer):
        seen["frozen"] = _frozen_after_setup(trainer)
        seen["ema"] = {k: v.clone() for k, v in trainer.model.model[7].state_dict().items()}
        seen["sppf"] = trainer.model.model[11].cv1.conv.weight.clone()

    model = YOLO("yolov8n-ema.yaml")
    model.add_callback("on_pretrain_routine_end", record)
    model.train(data=str(tiny_dataset), pretrained=str(stocks["random"]["yolov8n"]), freeze=10, epochs=1, imgsz=64,
                batch=8, device="cpu", workers=0, amp=False, plots=False, val=False, project=str(tmp_path), name="freeze")
    assert seen["frozen"] == {"0", "1", "2", "3", "4", "5", "6", "8", "9", "11"}  # the stock backbone; EMA 7, 10 train
    assert "freeze=10: froze the stock model's layers 0-9, which are this model's model.0-6, 8-9, 11; the attention " \
           "in model.7, 10 stays trainable" in ultralytics_log
    checkpoint = torch.load(tmp_path / "freeze" / "weights" / "last.pt", weights_only=False)
    assert model.trainer.args.freeze == 10 and checkpoint["train_args"]["freeze"] == 10  # the user's value is kept
    trained = model.trainer.model
    assert not torch.equal(trained.model[7].gn.weight, seen["ema"]["gn.weight"])  # EMA moved
    assert torch.equal(trained.model[11].cv1.conv.weight, seen["sppf"])  # SPPF did not


def test_freeze_in_a_ddp_worker_keeps_in_block_attention_trainable(tiny_dataset, stocks, tmp_path):
    # The worker rebuilds the trainer from the file Ultralytics' DDP launcher writes, in a fresh interpreter; here it
    # runs the set-up that freezes (no multi-GPU machine exists here) instead of training.
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.dist import generate_ddp_file

    trainer = DetectionTrainer(overrides={
        "model": "yolov8n-c2f-ema.yaml", "data": str(tiny_dataset), "epochs": 1, "imgsz": 64, "batch": 8,
        "device": "cpu", "workers": 0, "amp": False, "plots": False, "project": str(tmp_path), "name": "ddp",
        "pretrained": str(stocks["random"]["yolov8n"]), "freeze": 5})  # fmt: skip
    script = generate_ddp_file(trainer)
    with open(script) as f:
        code = f.read()
    report = "trainer._setup_train(); print(sorted({k.rsplit('.', 1)[0] for k, v in trainer.model.named_parameters() if not v.requires_grad}))"
    assert "trainer.train()" in code
    proc = subprocess.run([sys.executable, "-c", code.replace("trainer.train()", report)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    frozen = eval(proc.stdout.strip().splitlines()[-1])  # noqa: S307 - our own printed list
    assert not any(".attn" in name for name in frozen)
    assert {n.split(".")[1] for n in frozen if not n.endswith("dfl.conv")} == {"0", "1", "2", "3", "4"}
    assert "model.2.m.0.cv1.conv" in frozen and "model.4.m.1.cv2.bn" in frozen
