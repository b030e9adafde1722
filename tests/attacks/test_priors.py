"""Priors, and the BatchNorm terms against the momentum rule of a real one-step client."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradleak.attacks.priors import (
    bn_momenta,
    bn_statistics,
    buffer_matching,
    group_consistency,
    image_l2,
    implied_batch_statistics,
    total_variation,
)
from gradleak.fl import LocalData, LocalRecipe, local_update, model_state


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Conv2d(3, 4, 3, stride=2, bias=False), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 3 * 3, 5))


def test_total_variation_and_l2() -> None:
    assert float(total_variation(torch.full((1, 1, 5, 5), 0.3))) == 0.0
    checker = (torch.arange(4).view(1, 4) + torch.arange(4).view(4, 1)) % 2
    assert float(total_variation(checker.float().view(1, 1, 4, 4))) == pytest.approx(2.0)
    assert float(image_l2(torch.full((2, 1, 3, 3), 2.0))) == pytest.approx(4.0)


def test_group_consistency() -> None:
    same = torch.ones(3, 2, 1, 4, 4)
    assert torch.equal(group_consistency(same), torch.zeros(3))
    x = torch.stack([torch.zeros(1, 2, 2), 2 * torch.ones(1, 2, 2)])
    torch.testing.assert_close(group_consistency(x), torch.tensor([1.0, 1.0]))


def test_implied_statistics_are_the_clients_batch_statistics() -> None:
    model = bn_net()
    params, buffers = model_state(model)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    out = local_update(model, params, buffers, LocalData(x, y), LocalRecipe(steps=1, batch_size=4, shuffle=False))
    momenta = bn_momenta(model)
    assert momenta == {"1": pytest.approx(0.1), "4": pytest.approx(0.3)}
    implied = implied_batch_statistics(buffers, out.buffers, momenta)
    with torch.no_grad():
        h = model[0](x)
        torch.testing.assert_close(implied["1"][0], h.mean((0, 2, 3)), atol=1e-5, rtol=0)
        torch.testing.assert_close(implied["1"][1], h.var((0, 2, 3), unbiased=True), atol=1e-5, rtol=0)
    # the buffer term of a one-step replay is BN-statistics matching against the implied statistics
    dummy = torch.randn(4, 1, 8, 8)
    replay = local_update(model, params, buffers, LocalData(dummy, y), LocalRecipe(steps=1, batch_size=4,
                                                                                  shuffle=False))
    n = {"1": 4 * 8 * 8, "4": 4 * 3 * 3}
    unbiased = {k: (m, v * n[k] / (n[k] - 1)) for k, (m, v) in replay.per_step[0].bn_stats.items()}
    torch.testing.assert_close(buffer_matching(replay.buffers, out.buffers, momenta),
                               bn_statistics(unbiased, implied), atol=1e-4, rtol=1e-5)
    assert float(buffer_matching(out.buffers, out.buffers, momenta)) < 1e-5


def test_buffer_matching_needs_buffers() -> None:
    with pytest.raises(ValueError, match="withheld"):
        buffer_matching({}, {}, {"1": 0.1})
