"""Heads (loss weights, clamping) and adapters (shapes, published parameter count, registry)."""

import pytest
import torch
import torch.nn.functional as F

from puma_lightning.models.adapters import ADAPTERS, build_adapter, register_adapter
from puma_lightning.models.heads import ClickHead, RatingHead, build_head


def test_puma_adapter_has_the_published_parameter_count():
    with torch.device("meta"):
        adapter = build_adapter("puma", 2048, 3072, hidden=4096)
    assert sum(p.numel() for p in adapter.parameters()) == 88_128_512


@pytest.mark.parametrize("kind", ["puma", "compact"])
@pytest.mark.parametrize("source_dim,target_dim", [(32, 48), (48, 32), (40, 40)])
def test_adapter_maps_rows_between_widths(kind, source_dim, target_dim):
    adapter = build_adapter(kind, source_dim, target_dim, hidden=64)
    x = torch.randn(5, 2, source_dim, requires_grad=True)
    y = adapter(x)
    assert y.shape == (5, 2, target_dim)
    y.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in adapter.parameters())


def test_compact_adapter_structure():
    adapter = build_adapter("compact", 576, 640, hidden=4096, dropout=0.0)
    # Linear 576->1280, LayerNorm 1280, Linear 1280->640, residual Linear 576->640
    expected = (576 * 1280 + 1280) + 2 * 1280 + (1280 * 640 + 640) + (576 * 640 + 640)
    assert sum(p.numel() for p in adapter.parameters()) == expected


def test_adapter_registry_rejects_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register_adapter("puma")(torch.nn.Identity)
    with pytest.raises(ValueError, match="choose one of"):
        build_adapter("nope", 4, 4)
    assert {"puma", "compact"} <= set(ADAPTERS)


def test_rating_loss_is_point_eight_mse_plus_point_two_ce():
    torch.manual_seed(0)
    head = RatingHead()
    logits = torch.randn(7, 5)
    label = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 3.0, 4.0])
    output = head(logits)
    expected = 0.8 * F.mse_loss(output, label) + 0.2 * F.cross_entropy(logits, (label - 1).long())
    assert torch.allclose(head.loss(logits, output, label), expected)


def test_rating_head_shapes_init_and_clamp():
    head = RatingHead()
    head.init_bias(3.5)
    assert head.mlp[0].in_features == 5 and head.mlp[0].out_features == 32
    assert head.mlp[2].out_features == 12 and head.mlp[4].out_features == 1
    assert head(torch.zeros(3, 5)).shape == (3,)
    assert torch.equal(RatingHead.predict(torch.tensor([-2.0, 3.3, 9.0])), torch.tensor([1.0, 3.3, 5.0]))


def test_click_head_is_bce_on_the_yes_logit():
    head = ClickHead()
    logits = torch.tensor([[2.0], [-1.0], [0.5]])
    label = torch.tensor([1.0, 0.0, 1.0])
    output = head(logits)
    assert torch.allclose(output, logits[:, 0])
    assert torch.allclose(head.loss(logits, output, label), F.binary_cross_entropy_with_logits(logits[:, 0], label))
    assert torch.allclose(ClickHead.predict(output).float(), torch.sigmoid(logits[:, 0]))  # float64 out, see test_metrics
    with pytest.raises(ValueError):
        build_head("regression")
