"""YOLO26 and YOLO12 with EMA: the shipped YAMLs, stock checkpoints into them, the end-to-end head, training.

Oracles: the stock Ultralytics YAMLs and models of the same family (rows, tensors, raw outputs, predictions, metrics
and exports of the stock model from the same checkpoint), EMA's closed-form parameter count (10 cg^2 + 4 cg,
cg = channels / 32), and the optimizer Ultralytics builds. Stock checkpoints hold random tensors (conftest.py).
"""

import logging

import pytest
import torch
import yaml

from ema_yolo.integration import start, transfer
from ema_yolo.integration.ultralytics import model_cfg_dir
from ema_yolo.nn import EMA

# ema-yolo YAML -> (stock Ultralytics YAML, EMA row indices, the module each EMA row reads)
BASES = {
    "yolo26-ema.yaml": ("yolo26.yaml", [7, 12], ["C3k2", "C2PSA"]),  # P4 block; P5 stage after SPPF and C2PSA
    "yolo26-seg-ema.yaml": ("yolo26-seg.yaml", [7, 12], ["C3k2", "C2PSA"]),
    "yolo26-pose-ema.yaml": ("yolo26-pose.yaml", [7, 12], ["C3k2", "C2PSA"]),
    "yolo26-obb-ema.yaml": ("yolo26-obb.yaml", [7, 12], ["C3k2", "C2PSA"]),
    "yolo26-cls-ema.yaml": ("yolo26-cls.yaml", [7, 11], ["C3k2", "C2PSA"]),
    "yolo26-p2-ema.yaml": ("yolo26-p2.yaml", [14, 18, 25, 29], ["C3k2"] * 4),  # the 512/256-wide neck blocks
    "yolo12-ema.yaml": ("yolo12.yaml", [7, 10], ["A2C2f", "A2C2f"]),
}
TOLERANCE = 1e-5  # max |a - b| / max |a| of raw outputs, as tests/test_start.py


def _scaled(name, scale):
    family, _, rest = name.partition("-")
    return f"{family}{scale}-{rest}"


def _sources(row, index):
    f = row[0] if isinstance(row[0], list) else [row[0]]
    return [index + k if k < 0 else k for k in f]


@pytest.mark.parametrize("name", [*BASES, "yolo26-c3k2-ema.yaml"])
def test_yaml_is_the_stock_yaml_with_ema_rows(name, tmp_path, monkeypatch):
    from ultralytics.nn.tasks import yaml_model_load

    monkeypatch.chdir(tmp_path)  # bare names resolve from any folder, at every scale
    ours = yaml.safe_load((model_cfg_dir() / name).read_text())
    for scale in "nsmlx":
        d = yaml_model_load(_scaled(name, scale))
        assert d["scale"] == scale and (d["backbone"], d["head"]) == (ours["backbone"], ours["head"])
    stock_name = BASES[name][0] if name in BASES else "yolo26.yaml"
    stock = yaml_model_load(stock_name)
    for key in ("nc", "end2end", "reg_max", "kpt_shape", "scales"):
        assert ours.get(key) == stock.get(key), key
    rows, stock_rows = ours["backbone"] + ours["head"], stock["backbone"] + stock["head"]
    if name not in BASES:  # in-block: the stock rows, every C3k2 renamed
        assert rows == [[f, n, "C3k2EMA" if m == "C3k2" else m, a] for f, n, m, a in stock_rows]
        return
    attention = [i for i, row in enumerate(rows) if row[2] == "EMA"]
    assert attention == BASES[name][1]
    assert [rows[i - 1][2] for i in attention] == BASES[name][2]
    assert all(rows[i][:2] == [-1, 1] and rows[i][3] == ["c2"] for i in attention)
    kept = [i for i in range(len(rows)) if i not in attention]  # stock row k is row kept[k]
    for k, i in enumerate(kept):
        reads = [j - 1 if j in attention else j for j in _sources(rows[i], i)]  # an EMA row passes its input on
        assert [kept.index(j) if j >= 0 else j for j in reads] == _sources(stock_rows[k], k), (name, i)
        assert rows[i][1:] == stock_rows[k][1:], (name, i)


def _ema_params(channels):
    cg = channels // 32
    return 10 * cg * cg + 4 * cg


def test_exact_ema_parameter_increments():
    # docs/reproducing.md's cost columns: yolo26s puts EMA on 256 and 512 channels, yolo26s-p2 on the 256-, 128-,
    # 128- and 256-wide neck blocks; yolo12s as yolo26s
    from ultralytics import YOLO

    def count(cfg):
        return sum(p.numel() for p in YOLO(cfg).model.parameters())

    for cfg, stock, widths, total in (("yolo26s-ema.yaml", "yolo26s.yaml", [256, 512], 3296),
                                      ("yolo26s-p2-ema.yaml", "yolo26s-p2.yaml", [256, 128, 128, 256], 1696),
                                      ("yolo12s-ema.yaml", "yolo12s.yaml", [256, 512], 3296)):  # fmt: skip
        model = YOLO(cfg).model
        assert [m.channels for m in model.modules() if isinstance(m, EMA)] == widths
        assert count(cfg) - count(stock) == sum(map(_ema_params, widths)) == total


@pytest.fixture(scope="module")
def stock(tmp_path_factory, make_stock_checkpoint):
    """name -> a random stock checkpoint named as Ultralytics' release (80 classes; `-nc3`: the tiny set's 3)."""
    folder = tmp_path_factory.mktemp("stock")
    cfgs = {"yolo26s": ("yolo26s.yaml", 80), "yolo26s-seg": ("yolo26s-seg.yaml", 80), "yolo12s": ("yolo12s.yaml", 80),
            "yolo26n-nc3": ("yolo26n.yaml", 3)}  # fmt: skip
    return {name: make_stock_checkpoint(folder / f"{name}.pt", cfg, nc=nc, seed=7) for name, (cfg, nc) in cfgs.items()}


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def log():
    handler = _Lines()
    logger = logging.getLogger("ultralytics")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def _flat(output):
    """Every tensor of a model's output, in a fixed order (dict keys sorted; the head's input features left out)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for k in sorted(output) if k != "feats" for t in _flat(output[k])]
    return [t for o in output for t in _flat(o)]


def _raw(model, x):
    """Raw outputs: one-to-many and one-to-one boxes and scores (and masks, keypoints, ... of the task heads)."""
    with torch.no_grad():
        out = model.eval()(x)
    return _flat(out[1] if isinstance(out, tuple) else out)


def _difference(a, b):
    assert [t.shape for t in a] == [t.shape for t in b]
    return max(float((p - q).abs().max() / q.abs().max()) for p, q in zip(a, b))


@pytest.mark.parametrize("source, target", [("yolo26s", "yolo26s-ema"), ("yolo26s-seg", "yolo26s-seg-ema"),
                                            ("yolo12s", "yolo12s-ema")])  # fmt: skip
def test_stock_checkpoint_lands_fully_and_starts_function_preserving(stock, source, target, log, monkeypatch):
    from ultralytics import YOLO
    from ultralytics.nn.tasks import load_checkpoint

    reference = load_checkpoint(stock[source])[0].float()
    stock_state = reference.state_dict()
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    model = YOLO(f"{target}.yaml").load(stock[source]).model  # the default start: function-preserving
    assert _difference(_raw(model, x), _raw(reference, x)) <= TOLERANCE
    ema = [j for j, m in enumerate(model.model) if isinstance(m, EMA)]
    assert f"new: 2 EMA layers (model.{ema[0]}, model.{ema[1]}); function-preserving start: 2 attention rows" in log[-1]
    assert not [line for line in log if "no function-preserving start" in line]

    monkeypatch.setenv(start.START_ENV, "published")  # nothing but the load touches a tensor: identity
    model = YOLO(f"{target}.yaml").load(stock[source]).model
    kept = [j for j, m in enumerate(model.model) if not isinstance(m, EMA)]  # stock layer i is layer kept[i]
    state = model.state_dict()
    for key, value in stock_state.items():
        _, i, rest = key.split(".", 2)
        assert torch.equal(state[f"model.{kept[int(i)]}.{rest}"].to(value.dtype), value), key
    one2one = [k for k in stock_state if ".one2one_" in k]
    # one-to-one box and class branches: 3 levels x (2 x 6 + 2 and 4 x 6 + 2) entries (a Conv is a weight and BatchNorm's
    # 5, its step counter included); -seg adds the mask-coefficient branch, 3 x (2 x 6 + 2)
    assert len(one2one) == {"yolo26s": 120, "yolo26s-seg": 162, "yolo12s": 0}[source]
    report = transfer.transfer_report(model)
    assert report.tensors[0] == report.tensors[1] and [j for j, _ in report.new_layers] == ema
    assert model.names == reference.names
    assert _difference(_raw(model, x), _raw(reference, x)) > 0.05  # the oracle can tell a changed function


def test_p2_model_lands_the_backbone_and_the_shared_neck(stock, monkeypatch):
    from ultralytics import YOLO
    from ultralytics.nn.tasks import load_checkpoint

    monkeypatch.setenv(start.START_ENV, "published")
    model = YOLO("yolo26s-p2-ema.yaml").load(stock["yolo26s"]).model
    stock_state, state = load_checkpoint(stock["yolo26s"])[0].state_dict(), model.state_dict()
    # stock yolo26s -> yolo26s-p2-ema: backbone 0-10 in place, the top-down neck 11-13 in place, 14-16 one row later
    # (after the EMA at 14); the bottom-up neck and the head read other maps in the P2 model and start fresh
    landed = {**{i: i for i in range(14)}, 14: 15, 15: 16, 16: 17}
    for key, value in stock_state.items():
        _, i, rest = key.split(".", 2)
        if int(i) in landed:
            assert torch.equal(state[f"model.{landed[int(i)]}.{rest}"].to(value.dtype), value), key
    report = transfer.transfer_report(model)
    assert sorted(i for i, _ in report.dropped_layers) == [17, 19, 20, 22, 23]
    assert report.body_share > 0.5


def test_pretrained_through_the_stock_cli_and_the_training_api(stock, tiny_dataset, tmp_path, monkeypatch):
    # `yolo train model=Y pretrained=P` (the stock entry point, in this process) and YOLO(Y).train(pretrained=P):
    # the model the trainer is about to train computes the stock function; with the published start it holds every
    # stock tensor. Stopped before the first step.
    from ultralytics import YOLO
    from ultralytics.cfg import entrypoint
    from ultralytics.nn.tasks import load_checkpoint
    from ultralytics.utils.callbacks.base import default_callbacks

    seen = []

    class Stop(Exception):
        pass

    def snapshot(trainer):
        seen.append(trainer.model)
        raise Stop

    monkeypatch.setitem(default_callbacks, "on_pretrain_routine_end", [snapshot])
    args = dict(data=str(tiny_dataset), pretrained=str(stock["yolo26n-nc3"]), epochs=1, imgsz=64, batch=8,
                device="cpu", workers=0, amp=False, plots=False, project=str(tmp_path))  # fmt: skip
    with pytest.raises(Stop):
        entrypoint("yolo train model=yolo26n-ema.yaml " + " ".join(f"{k}={v}" for k, v in {**args, "name": "cli"}.items()))
    monkeypatch.setenv(start.START_ENV, "published")
    with pytest.raises(Stop):
        YOLO("yolo26n-ema.yaml").train(**args, name="api")
    reference = load_checkpoint(stock["yolo26n-nc3"])[0].float()
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    assert _difference(_raw(seen[0], x), _raw(reference, x)) <= TOLERANCE
    kept = [j for j, m in enumerate(seen[1].model) if not isinstance(m, EMA)]
    state = seen[1].state_dict()
    for key, value in reference.state_dict().items():
        _, i, rest = key.split(".", 2)
        assert torch.equal(state[f"model.{kept[int(i)]}.{rest}"].to(value.dtype), value), key
