"""Batch norm folded into the frozen convolutions while a network trains (xfer.nets.fold)."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from torch import nn

from xfer.nets.fold import folded_batchnorm
from xfer.nets.strategies import build_network, make_spec

# Backbones whose first stages have conv + batch norm pairs (vgg16 has no batch norm, convnext layer norm).
WITH_BN = ["efficientnet_lite0", "resnet18", "efficientnet_b0", "mobilenet_v3_large"]


def _random_statistics(net: nn.Module) -> None:
    """Batch-norm statistics and affine parameters away from their identity initialisation, so folding shows."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)


def _net(backbone: str, strategy: str = "finetune") -> nn.Module:
    torch.manual_seed(0)
    net = build_network(make_spec(backbone, strategy, 3))
    _random_statistics(net)
    return net


@pytest.mark.parametrize("backbone", WITH_BN)
def test_folding_keeps_outputs_and_gives_every_original_back(backbone):
    net = _net(backbone)
    x = torch.randn(2, 3, 48, 48)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    params = {k: p for k, p in net.named_parameters()}
    modules = dict(net.named_modules())
    with torch.no_grad():
        expected = net.eval()(x)
    net.train()
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    with folded_batchnorm(net, net.frozen_parts) as folded:
        assert folded > 0 and sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == bns - folded
        with torch.no_grad():
            got = net.eval()(x)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
        net.train()
        assert not any(m.training for part in net.frozen_parts for m in part.modules())
    after = net.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert all(p is params[k] for k, p in net.named_parameters())  # the same Parameter objects
    assert all(m is modules[k] for k, m in net.named_modules())
    assert net.training


def test_a_training_step_is_the_same_folded_or_not():
    """The trainable layers see the same loss and gradients (to rounding); the frozen ones none.

    With the packaged ImageNet weights: a randomly initialised network amplifies rounding
    differences through its training-mode batch norms far more than a trained one does.
    """
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 96, 96, generator=g), torch.tensor([0, 1, 2, 1, 0, 2, 1, 0])
    grads = []
    for fold in (False, True):
        torch.manual_seed(0)  # the same new head
        net = build_network(make_spec("efficientnet_lite0", "finetune", 3), weights="imagenet").train()
        with folded_batchnorm(net, net.frozen_parts if fold else ()) as n:
            assert (n > 0) == fold
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            frozen = [p for part in net.frozen_parts for p in part.parameters()]
            assert all(p.grad is None and not p.requires_grad for p in frozen)
        grads.append((loss.detach(), {k: p.grad for k, p in net.named_parameters() if p.requires_grad}))
    (l0, g0), (l1, g1) = grads
    torch.testing.assert_close(l1, l0, rtol=1e-4, atol=0.0)
    assert g0.keys() == g1.keys() and g0
    # Training-mode batch norms amplify rounding, and some bias gradients are zero up to rounding (~1e-8),
    # where an element-wise tolerance means nothing; so each tensor's error is measured against its norm.
    # Measured on this project's 2-core machine: at most 1% for every gradient above 1e-4 in norm.
    scale = max(g.norm().item() for g in g0.values())
    for k in g0:
        if g0[k].norm() > 1e-4 * scale:
            err = ((g1[k] - g0[k]).norm() / g0[k].norm()).item()
            assert err < 3e-2, f"{k}: folded gradient differs by {err:.1%}"


def test_a_frozen_body_folds_whole_and_is_restored_after_an_error():
    net = _net("resnet18", "head")
    bn = net.body.bn1
    with pytest.raises(RuntimeError, match="stop"):
        with folded_batchnorm(net, (net.body,)) as n:
            assert n == 20 and isinstance(net.body.bn1, nn.Identity)  # every batch norm of resnet18
            raise RuntimeError("stop")
    assert net.body.bn1 is bn and net.body.conv1.bias is None


class _Misleading(nn.Module):
    """Registers conv then bn but applies bn first: registration order does not say what follows what."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


def test_a_block_that_registration_order_misdescribes_stays_unfolded(caplog):
    net = _Misleading()
    _random_statistics(net)
    net.requires_grad_(False).eval()
    x = torch.randn(2, 3, 16, 16)
    expected = net(x)
    with caplog.at_level(logging.WARNING, logger="xfer.nets.fold"):
        with folded_batchnorm(net, (net,), probe=x) as n:
            assert n == 0 and isinstance(net.bn, nn.BatchNorm2d)
            torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
    assert "training unfolded" in caplog.text


def test_nothing_to_fold_is_a_no_op():
    net = build_network(make_spec("vgg16", "finetune", 3))  # no batch norm anywhere
    with folded_batchnorm(net, net.frozen_parts) as n:
        assert n == 0
    net = build_network(make_spec("resnet18", "finetune", 3, frozen_stages=0))
    with folded_batchnorm(net, net.frozen_parts) as n:
        assert n == 0


class _StopMidEpoch:
    """Cancels once the first training batch has been run (while the frozen stages are folded)."""

    def __init__(self) -> None:
        self.calls = 0

    def is_set(self) -> bool:
        self.calls += 1
        return self.calls > 2  # the check before training, then one after the first batch


@pytest.mark.parametrize("strategy", ["finetune", "head"])
def test_fit_trains_folded_and_returns_the_network_as_built(tmp_path, strategy, caplog):
    import xfer
    from tests.conftest import make_color_dataset
    from xfer.data import scan_folder
    from xfer.engine import TrainConfig, fit

    colors = scan_folder(make_color_dataset(tmp_path / "c", per_class=6, size=32))
    items = list(colors.items)
    pre = xfer.get_backbone("resnet18").get_preprocessing().for_size(32)
    cpu = xfer.select_device("cpu", num_workers=0)
    net = _net("resnet18", strategy)
    keys = list(net.state_dict())
    frozen = net.frozen_parts if strategy == "finetune" else (net.body,)
    frozen_state = {f"{i}.{k}": v.clone() for i, part in enumerate(frozen) for k, v in part.state_dict().items()}
    with caplog.at_level(logging.DEBUG, logger="xfer.nets.fold"):
        result = fit(net, strategy, items[::2], items[1::2], pre, TrainConfig(epochs=2, batch_size=4, seed=0), cpu)
    counts = [int(n) for n in re.findall(r"folded (\d+) batch norms", caplog.text)]
    assert counts and all(n == counts[0] > 0 for n in counts)  # every training pass ran folded
    assert list(result.net.state_dict()) == keys
    now = {f"{i}.{k}": v for i, part in enumerate(frozen) for k, v in part.state_dict().items()}
    assert all(torch.equal(now[k], frozen_state[k]) for k in frozen_state)
    # The reported validation outputs are those of the returned (unfolded) network.
    if strategy == "finetune":
        with pytest.raises(xfer.Cancelled):
            fit(net, strategy, items[::2], items[1::2], pre, TrainConfig(epochs=1, batch_size=4, seed=0), cpu,
                cancel=_StopMidEpoch())
        assert list(net.state_dict()) == keys and isinstance(net.body.bn1, nn.BatchNorm2d)
