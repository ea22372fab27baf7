"""YOLO26 and YOLO12 with EMA: the shipped YAMLs, stock checkpoints into them, the end-to-end head, training.

Oracles: the stock Ultralytics YAMLs and models of the same family (rows, tensors, raw outputs, predictions, metrics
and exports of the stock model from the same checkpoint), EMA's closed-form parameter count (10 cg^2 + 4 cg,
cg = channels / 32), and the optimizer Ultralytics builds. Stock checkpoints hold random tensors (conftest.py).
"""


import pytest
import torch
import yaml

from ema_yolo.integration import start, transfer
from ema_yolo.integration.model_cfgs import model_cfg_dir
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
def test_stock_checkpoint_lands_fully_and_starts_function_preserving(stock, source, target, ultralytics_log, monkeypatch):
    from ultralytics import YOLO
    from ultralytics.nn.tasks import load_checkpoint

    reference = load_checkpoint(stock[source])[0].float()
    stock_state = reference.state_dict()
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    model = YOLO(f"{target}.yaml").load(stock[source]).model  # the default start: function-preserving
    assert _difference(_raw(model, x), _raw(reference, x)) <= TOLERANCE
    ema = [j for j, m in enumerate(model.model) if isinstance(m, EMA)]
    assert f"new: 2 EMA layers (model.{ema[0]}, model.{ema[1]}); function-preserving start: 2 attention rows" in ultralytics_log[-1]
    assert not [line for line in ultralytics_log if "no function-preserving start" in line]

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


@pytest.fixture(scope="module")
def e2e(stock, tmp_path_factory):
    """(yolo26n-ema checkpoint, stock yolo26n checkpoint): the EMA model started function-preserving from the stock
    one (3 classes), so everything downstream of the raw outputs must be the stock model's."""
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    # The head's last convolutions scaled as a trained head's: box side distances of about 2 strides (reg_max 1: the
    # distances themselves, negative ones make boxes of negative area) and class scores spread around 0.1 (random
    # ones saturate at 1, whose ties NMS breaks arbitrarily, so two correct runtimes would keep different boxes).
    source = load_checkpoint(stock["yolo26n-nc3"])[0]
    head = source.model[-1]
    torch.manual_seed(0)
    with torch.no_grad():
        for branch in (*head.cv2, *head.one2one_cv2):
            branch[-1].weight.div_(branch[-1].weight[0].numel())
            branch[-1].bias.uniform_(1.5, 2.5)
        for branch in (*head.cv3, *head.one2one_cv3):
            branch[-1].weight.div_(branch[-1].weight[0].numel() ** 0.5)
            branch[-1].bias.normal_(-2.0, 1.0)
    folder = tmp_path_factory.mktemp("e2e")
    torch.save({"model": source.half(), "train_args": {}}, folder / "yolo26n.pt")
    model = DetectionModel("yolo26n-ema.yaml", nc=3, verbose=False)
    model.load(load_checkpoint(folder / "yolo26n.pt")[0], verbose=False)
    model.names = source.names
    torch.save({"model": model.half(), "train_args": {}}, folder / "yolo26n-ema.pt")  # halving 2^k x w is exact
    return str(folder / "yolo26n-ema.pt"), str(folder / "yolo26n.pt")


@pytest.fixture(scope="module")
def photos():
    from ultralytics.utils import ASSETS

    return [str(ASSETS / "bus.jpg"), str(ASSETS / "zidane.jpg")]


def test_end_to_end_head_predicts_validates_and_fuses_as_stock(e2e, photos, tiny_dataset):
    # nms=None: the one-to-many head and NMS; nms=False: the NMS-free one-to-one head, `fuse()` drops the other
    from ultralytics import YOLO

    ours, theirs = YOLO(e2e[0]), YOLO(e2e[1])
    for nms, dropped in ((None, "one2one_cv2"), (False, "cv2")):
        kwargs = dict(imgsz=64, conf=0.05, nms=nms, device="cpu", verbose=False)
        results = [model.predict(photos, **kwargs) for model in (ours, theirs)]
        for a, b in zip(*results):
            assert len(b.boxes) > 0 and a.boxes.data.shape == b.boxes.data.shape, nms
            torch.testing.assert_close(a.boxes.data, b.boxes.data, rtol=1e-4, atol=1e-4)
        for model in (ours, theirs):
            head = model.predictor.model.model.model[-1]  # AutoBackend fused it
            assert getattr(head, dropped) is None and head.end2end == (nms is False)
        metrics = [model.val(data=str(tiny_dataset), imgsz=64, batch=8, nms=nms, device="cpu", plots=False,
                             verbose=False).results_dict for model in (ours, theirs)]  # fmt: skip
        assert metrics[0] == pytest.approx(metrics[1], abs=1e-6)


def _rows_match(got, want, tol):
    """Every detection row (x1, y1, x2, y2, score, class) of `want` has a row in `got` within `tol` (top-k order may
    swap rows of near-equal scores)."""
    got, want = torch.as_tensor(got).reshape(-1, 6).float(), torch.as_tensor(want).reshape(-1, 6).float()
    assert got.shape == want.shape
    return bool((torch.cdist(want, got, p=float("inf")).min(1).values < tol).all())


def test_exports_match_pytorch_with_and_without_nms(e2e, photos, tmp_path):
    from ultralytics import YOLO

    from ema_yolo.export.check import _load
    from ema_yolo.export.commands import main
    from ema_yolo.export.compare import head_output, load_images

    # the default (one-to-many) head through `ema-yolo check-exports`, with the stock yolo26n as the baseline
    out = tmp_path / "check"
    assert main([*photos, "--model", e2e[0], "--baseline", e2e[1], "--formats", "onnx-nosimplify", "--imgsz", "64",
                 "--out", str(out)]) == 0  # fmt: skip
    rows = yaml.safe_load((out / "results.json").read_text())["rows"]  # JSON is YAML
    for row in rows:
        assert row["status"] == "match" and row["baseline"]["raw"] < 1e-3, row
        assert row["sizes"]["64"]["boxes"] > 0 and row["latency_ms"] > 0, row
    # both formats on the NMS-free head (nms=False: the one-to-one head's top-k detections, (batch, k, 6), as the
    # stock model's); the default head's ONNX export above, OpenVINO's in tests/test_export.py (format, not family)
    x = load_images(photos, 64)
    reference = YOLO(e2e[1]).model.float().eval()
    reference.end2end = True
    with torch.no_grad():
        want = reference(x)[0]
    assert tuple(want.shape) == (2, 8 * 8 + 4 * 4 + 2 * 2, 6)  # k = min(max_det 300, anchors)
    for fmt in ("onnx", "openvino"):
        simplify = {"simplify": False} if fmt == "onnx" else {}  # onnxslim takes longer than the export
        exported = YOLO(e2e[0]).export(format=fmt, nms=False, imgsz=64, device="cpu", verbose=False, **simplify)
        backend = _load(exported, fmt)  # OpenVINO in float32 arithmetic, as check-exports runs it
        got = torch.cat([head_output(backend(x[i : i + 1])) for i in range(len(x))])
        assert got.shape == want.shape and _rows_match(got, want, 1e-3 * 64), fmt


TRAIN = {"yolo26n-ema.yaml": "detect", "yolo26n-p2-ema.yaml": "detect", "yolo26n-c3k2-ema.yaml": "detect",
         "yolo12n-ema.yaml": "detect", "yolo26n-seg-ema.yaml": "segment", "yolo26n-pose-ema.yaml": "pose",
         "yolo26n-obb-ema.yaml": "obb", "yolo26n-cls-ema.yaml": "classify"}  # fmt: skip


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    from ema_yolo.data.synth import make_task_dataset

    folder = tmp_path_factory.mktemp("tasks")
    return {t: make_task_dataset(folder / t, t, train=4, val=2, size=64, seed=3) for t in sorted(set(TRAIN.values()))}


@pytest.mark.parametrize("cfg", list(TRAIN))
def test_one_epoch_trains_attention_with_the_stock_trainer(cfg, task_data, tmp_path):
    # yolo26n-ema trains with MuSGD (what `optimizer=auto` picks on long runs): EMA's parameters in its groups
    from ultralytics import YOLO
    from ultralytics.optim import MuSGD

    from ema_yolo.nn.csp_attn import AttnBottleneck

    def attention(model):
        layers = [m.attn if isinstance(m, AttnBottleneck) else m for m in model.modules()
                  if isinstance(m, (EMA, AttnBottleneck))]  # fmt: skip
        return {f"{i}.{k}": p for i, m in enumerate(layers) for k, p in m.named_parameters()}

    seen = {}

    def record(trainer):
        seen["before"] = {k: p.detach().clone() for k, p in attention(trainer.model).items()}

    musgd = cfg == "yolo26n-ema.yaml"
    model = YOLO(cfg)
    model.add_callback("on_pretrain_routine_end", record)
    model.train(data=str(task_data[TRAIN[cfg]]), epochs=1, imgsz=64, batch=4, device="cpu", workers=0, amp=False,
                plots=False, val=False, project=str(tmp_path), name="run", verbose=False,
                optimizer="MuSGD" if musgd else "auto")  # fmt: skip
    after = attention(model.trainer.model)
    assert seen["before"] and after.keys() == seen["before"].keys()
    assert all(not torch.equal(p, seen["before"][k]) for k, p in after.items() if "gn." in k or "conv" in k)
    trained = YOLO(tmp_path / "run" / "weights" / "last.pt")
    assert trained.task == TRAIN[cfg] and len(attention(trained.model)) == len(after)
    if musgd:
        optimizer = model.trainer.optimizer
        assert isinstance(optimizer, MuSGD)
        groups = [{id(p) for p in g["params"]} for g in optimizer.param_groups]
        muon = set().union(*(ids for ids, g in zip(groups, optimizer.param_groups) if g.get("use_muon")))
        for p in after.values():
            assert sum(id(p) in ids for ids in groups) == 1  # in exactly one group
            assert (id(p) in muon) == (p.ndim == 4)  # convolution filters orthogonalised, the rest plain SGD
