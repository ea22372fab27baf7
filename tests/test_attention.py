"""CBAM, CA and SE: shapes, gradients, factory, and behaviour against hand-computed cases."""

import pytest
import torch

from ema_yolo.nn import ATTENTION_LAYERS, CA, CBAM, SE, create_attn


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
    for layer, scale in ((SE(32), 0.5), (CA(32), 0.25), (CBAM(32), 0.25)):
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
