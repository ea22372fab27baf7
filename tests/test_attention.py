"""CBAM, CA, SE and ECA: shapes, gradients, factory, and behaviour against hand-computed cases and timm."""

import pytest
import torch

from ema_yolo.nn import ATTENTION_LAYERS, CA, CBAM, ECA, SE, create_attn
from ema_yolo.nn.eca import eca_kernel_size


@pytest.mark.parametrize("name", sorted(ATTENTION_LAYERS))
@pytest.mark.parametrize("shape", [(2, 48, 7, 5), (1, 16, 1, 1), (2, 256, 4, 4)])
def test_shapes_and_gradients(name, shape):
    layer = create_attn(name, shape[1])
    x = torch.randn(shape, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in layer.parameters())


def test_factory_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown attention layer 'nope'"):
        create_attn("nope", 8)


def test_gates_by_hand():
    # With zero weights and biases every gate is sigmoid(0) = 0.5.
    x = torch.randn(2, 32, 6, 4)
    for layer, scale in ((SE(32), 0.5), (CA(32), 0.25), (CBAM(32), 0.25), (ECA(32), 0.5)):
        for p in layer.parameters():
            torch.nn.init.zeros_(p)
        layer.eval()
        assert torch.allclose(layer(x), x * scale, atol=1e-6)


def test_se_is_global_average_gate():
    se = SE(8, reduction=1)
    x = torch.randn(1, 8, 3, 3)
    pooled = x.mean((2, 3), keepdim=True)
    expected = x * se.fc2(torch.relu(se.fc1(pooled))).sigmoid()
    assert torch.allclose(se(x), expected)


def test_eca_by_hand():
    # C = 4 channels, k = 3 (given), kernel (1, 2, 3), zero padding at both ends of the channel axis.
    eca = ECA(4, kernel_size=3)
    with torch.no_grad():
        eca.conv.weight.copy_(torch.tensor([[[1.0, 2.0, 3.0]]]))
    x = torch.arange(4.0).repeat_interleave(6).view(1, 4, 2, 3) + torch.tensor([0.0, 0, 0, 0, 0, 6.0]).view(1, 1, 2, 3)
    pooled = [1.0, 2.0, 3.0, 4.0]  # channel means: c + 1 (one pixel of 6 adds 6 / 6)
    logits = [2 * 1 + 3 * 2, 1 * 1 + 2 * 2 + 3 * 3, 1 * 2 + 2 * 3 + 3 * 4, 1 * 3 + 2 * 4]  # (1, 2, 3) * (c-1, c, c+1)
    assert torch.allclose(x.mean((2, 3)), torch.tensor([pooled]))
    expected = x * torch.tensor(logits).sigmoid().view(1, 4, 1, 1)
    assert torch.allclose(eca(x), expected)
    # the paper's adaptive size, |log2(C) / 2 + 1 / 2| to the odd: (C, k) hand-computed
    assert [eca_kernel_size(c) for c in (16, 64, 128, 256, 512, 1024)] == [3, 3, 5, 5, 5, 5]
    assert ECA(256).conv.kernel_size == (5,) and ECA(64).conv.weight.numel() == 3


@pytest.mark.parametrize("channels", [16, 64, 256, 512])
def test_eca_equals_timm(channels):
    from timm.layers import EcaModule

    torch.manual_seed(0)
    ours, theirs = ECA(channels).double(), EcaModule(channels).double()
    assert ours.conv.weight.shape == theirs.conv.weight.shape  # the same adaptive kernel size
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, channels, 7, 5, dtype=torch.float64, requires_grad=True)
    y_ours, y_theirs = ours(x), theirs(x)
    assert torch.allclose(y_ours, y_theirs, atol=1e-12)
    g_ours = torch.autograd.grad(y_ours.square().sum(), [x, ours.conv.weight])
    g_theirs = torch.autograd.grad(y_theirs.square().sum(), [x, theirs.conv.weight])
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(g_ours, g_theirs))
