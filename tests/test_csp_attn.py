"""CSP blocks with attention in every bottleneck (C2fEMA, C3EMA, C3k2EMA and twins), built by the stock parser.

Oracles: the stock Ultralytics model of the same family and scale (convolution names and shapes, its bottlenecks and
their channels), the closed form of EMA's parameter count (10 cg^2 + 4 cg, cg = channels / groups, groups = the largest
divisor of the channels <= 32), and the attention layers built on their own.
"""

import copy

import pytest
import torch
from torch import nn

from ema_yolo.nn import CA, CBAM, EMA, SE

FAMILIES = [("yolov8", "c2f"), ("yolo11", "c3k2"), ("yolov5", "c3")]


def _parse(cfg):
    """The layers of model YAML `cfg` as Ultralytics' model classes build them (on the meta device: shapes only)."""
    from ultralytics.nn import tasks

    with torch.device("meta"):
        return tasks.parse_model(copy.deepcopy(tasks.yaml_model_load(cfg)), ch=3, verbose=False)[0]


def _convolutions(model):
    """Name -> weight shape of every convolution outside the attention layers."""
    return {k: tuple(m.weight.shape) for k, m in model.named_modules() if isinstance(m, nn.Conv2d) and ".attn" not in k}


def _stock_bottleneck_channels(model):
    from ultralytics.nn.modules.block import Bottleneck

    return [m.cv2.conv.out_channels for m in model.modules() if type(m) is Bottleneck]


def _ema_params(channels):
    groups = max(g for g in range(1, 33) if channels % g == 0)
    cg = channels // groups
    return 10 * cg * cg + 4 * cg


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family, block", FAMILIES)
def test_in_block_models_have_the_stock_convolutions_and_one_ema_per_bottleneck_at_every_scale(family, block):
    for scale in "nsmlx":
        stock, model = _parse(f"{family}{scale}.yaml"), _parse(f"{family}{scale}-{block}-ema.yaml")
        assert _convolutions(model) == _convolutions(stock), scale
        channels = _stock_bottleneck_channels(stock)
        assert len(channels) >= 8, scale
        attn = [m.attn for m in model.modules() if hasattr(m, "attn") and isinstance(m.attn, EMA)]
        assert sorted(a.channels for a in attn) == sorted(channels), scale
        assert _params(model) - _params(stock) == sum(_ema_params(c) for c in channels), scale


def test_c3k2_follows_the_stock_c3k_rule():
    from ultralytics.nn.modules.block import C3k

    def c3k(model):
        return [isinstance(m.m[0], C3k) for m in model if type(m).__name__.startswith("C3k2")]

    small, medium = _parse("yolo11s-c3k2-ema.yaml"), _parse("yolo11m-c3k2-ema.yaml")
    assert c3k(small) == c3k(_parse("yolo11s.yaml")) == [False, False, True, True, False, False, False, True]
    assert c3k(medium) == [True] * 8  # scales m, l, x: C3k in every C3k2


@pytest.mark.parametrize("attention, cls", [("cbam", CBAM), ("ca", CA), ("se", SE)])
@pytest.mark.parametrize("family, block", FAMILIES)
def test_twins_add_exactly_their_attention_layers(family, block, attention, cls):
    stock, model = _parse(f"{family}n.yaml"), _parse(f"{family}n-{block}-{attention}.yaml")
    assert _convolutions(model) == _convolutions(stock)
    channels = _stock_bottleneck_channels(stock)
    attn = [m.attn for m in model.modules() if hasattr(m, "attn") and isinstance(m.attn, cls)]
    assert len(attn) == len(channels)
    assert _params(model) - _params(stock) == sum(_params(cls(c)) for c in channels)


class _Double(nn.Module):
    def forward(self, x):
        return 2 * x


def test_attention_sits_after_the_second_conv_before_the_shortcut_add():
    from ultralytics.nn.modules.block import C2f

    from ema_yolo.nn.csp_attn import C2fEMA

    torch.manual_seed(0)
    block, stock = C2fEMA(16, 16, 2, shortcut=True).eval(), C2f(16, 16, 2, shortcut=True).eval()
    missing, unexpected = stock.load_state_dict(block.state_dict(), strict=False)
    assert missing == [] and unexpected and all(".attn." in k or k.endswith("._extra_state") for k in unexpected)
    x = torch.randn(2, 16, 8, 8)
    b = block.m[0]
    with torch.no_grad():
        assert torch.allclose(b(x[:, :8]), x[:, :8] + b.attn(b.cv2(b.cv1(x[:, :8]))))
        for m in block.m:
            m.attn = _Double()  # x + 2 f(x): scaling after the add would give 2 x + 2 f(x)
        y = list(stock.cv1(x).chunk(2, 1))
        for m in stock.m:
            y.append(y[-1] + 2 * m.cv2(m.cv1(y[-1])))
        assert torch.allclose(block(x), stock.cv2(torch.cat(y, 1)), atol=1e-6)


def test_blocks_build_directly_and_checkpoints_load_with_ultralytics_safe_load(tmp_path):
    from ultralytics import YOLO
    from ultralytics.nn.tasks import torch_safe_load

    from ema_yolo.nn.csp_attn import AttnBottleneck, C3k2EMA

    block = C3k2EMA(32, 64, 2, True)  # c3k: two C3k of two bottlenecks each
    assert sum(isinstance(m.attn, EMA) for m in block.modules() if hasattr(m, "attn")) == 4
    model = YOLO("yolov8n-c2f-ema.yaml").model.eval()
    torch.save({"model": model}, tmp_path / "m.pt")
    loaded = torch_safe_load(tmp_path / "m.pt", safe_only=True)[0]["model"].eval()  # torch.load(weights_only=True)
    assert sum(isinstance(m, AttnBottleneck) for m in loaded.modules()) == 10  # yolov8n: 1+2+2+1 backbone, 4 head
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])


def test_self_check_passes_under_the_meta_device():
    # The self-check may run while a model is built under torch.device("meta") (shape inference, as `_parse` here,
    # with the first registration inside it); it must still compare on real tensors instead of failing on `.item()` of
    # a meta tensor.
    from ultralytics.nn import tasks

    from ema_yolo.integration import parse_model

    with torch.device("meta"):
        parse_model.check(tasks.parse_model.ema_yolo_wrapped)
    layers = _parse("yolov8n-c2f-ema.yaml")
    assert all(p.is_meta for p in layers.parameters())


def test_self_check_fails_loudly_when_ultralytics_changes_what_it_relies_on(monkeypatch):
    from ultralytics.nn import tasks
    from ultralytics.nn.modules.block import Bottleneck

    from ema_yolo.integration import parse_model

    stock = tasks.parse_model.ema_yolo_wrapped
    parse_model.check(stock)  # this Ultralytics passes

    class RenamedBottleneck(Bottleneck):
        pass

    def other_inner_block(d, ch, verbose=True):  # a release whose C3k2 builds another bottleneck class
        layers, save = stock(d, ch, verbose)
        for m in layers.modules():
            if type(m) is Bottleneck:
                m.__class__ = RenamedBottleneck
        return layers, save

    def new_signature(d, ch, verbose, channels_last):  # a release whose parser takes another argument
        return stock(d, ch, verbose)

    match = "cannot build C2fEMA/C3EMA/C3k2EMA rows with ultralytics"
    with pytest.raises(RuntimeError, match=match):  # no bottleneck would get attention
        parse_model.check(other_inner_block)
    with pytest.raises(RuntimeError, match=match + ".*TypeError"):
        parse_model.check(new_signature)
    monkeypatch.setattr(Bottleneck, "forward", lambda self, x: self.cv2(self.cv1(x)))  # a release without shortcut
    with pytest.raises(RuntimeError, match=match + ".*Bottleneck no longer computes"):
        parse_model.check(stock)


@pytest.mark.parametrize("source, target", [("yolov8n.yaml", "yolov8n-c2f-ema.yaml"), ("yolo11n.yaml", "yolo11n-c3k2-ema.yaml"),
                                            ("yolov5n.yaml", "yolov5n-c3-ema.yaml")])  # fmt: skip
def test_every_stock_tensor_lands_in_the_in_block_model(tmp_path, make_stock_checkpoint, source, target, monkeypatch):
    from ultralytics import YOLO
    from ultralytics.nn.tasks import load_checkpoint

    monkeypatch.setenv("EMA_YOLO_START", "published")  # identity of every tensor; the default start: test_start.py
    path = make_stock_checkpoint(tmp_path / "stock.pt", source, nc=80, seed=2)
    stock = {k: v.float() for k, v in load_checkpoint(path)[0].state_dict().items() if v.is_floating_point()}
    torch.manual_seed(4)
    fresh = YOLO(target).model.state_dict()
    torch.manual_seed(4)
    state = YOLO(target).load(path).model.state_dict()
    for key, value in stock.items():
        assert torch.equal(state[key].float(), value), key
    new = [k for k, v in state.items() if v.is_floating_point() and k not in stock]
    assert new and all(".attn." in k or k.endswith("._extra_state") for k in new)  # attention, and its block's gain
    assert all(torch.equal(state[k], fresh[k]) for k in new)  # the attention layers keep their initialisation


@pytest.mark.parametrize("family, block", FAMILIES)
def test_twins_differ_from_the_ema_file_only_in_the_block(family, block):
    from ultralytics.nn.tasks import yaml_model_load

    def rows(attention):
        d = yaml_model_load(f"{family}-{block}-{attention}.yaml")
        return d["backbone"] + d["head"]

    parent = {"c2f": "C2f", "c3k2": "C3k2", "c3": "C3"}[block]
    ema = rows("ema")
    assert sum(r[2] == f"{parent}EMA" for r in ema) == 8 and not any(r[2] == parent for r in ema)
    for attention in ("cbam", "ca", "se", "eca"):
        swapped = [[f, n, f"{parent}{attention.upper()}" if m == f"{parent}EMA" else m, a] for f, n, m, a in ema]
        assert rows(attention) == swapped
