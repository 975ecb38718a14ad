"""Batch norm folded into the convolution before it, in the frozen parts of a network, while it trains.

A frozen part runs in eval mode (:class:`~xfer.nets.strategies.Classifier`), so each of its
batch norms is a fixed per-channel affine map, which can be merged into the preceding
convolution's weights and bias. That saves one pass over every activation the frozen
part makes (memory-bound work on a CPU; measured: README, "finetune step cost").

:func:`folded_batchnorm` does it temporarily and in place: it swaps folded weights into
the convolutions and identities in for the batch norms, and puts the original modules and
parameters back (the same objects, bit for bit) on exit, also when training is stopped or
fails. Saved models, state dicts and evaluation never see the folded form.

Which batch norm follows which convolution is read from module registration order
(consecutive children of one parent), which is how torchvision's and the lite0 package's
blocks are written; the fold is kept only if the network's outputs on a probe batch stay
the same, so a block written otherwise is left unfolded instead of computed wrongly.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

log = logging.getLogger(__name__)


def _pairs(root: nn.Module, frozen: Iterable[nn.Module]) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(conv, bn) pairs inside the frozen modules where bn is registered right after conv in some parent."""
    inside = {id(m) for part in frozen for m in part.modules()}
    pairs, seen = [], set()
    for parent in root.modules():
        children = [c for c in parent._modules.values() if c is not None]
        for conv, bn in zip(children, children[1:]):
            if (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and id(conv) in inside
                    and id(bn) in inside and bn.track_running_stats and bn.running_mean is not None
                    and bn.num_features == conv.out_channels and (id(conv), id(bn)) not in seen
                    and not conv.weight.requires_grad):
                seen.add((id(conv), id(bn)))
                pairs.append((conv, bn))
    return pairs


@contextlib.contextmanager
def folded_batchnorm(net: nn.Module, frozen: Iterable[nn.Module], probe: torch.Tensor | None = None,
                     rtol: float = 1e-3) -> Iterator[int]:
    """Within the block, ``net``'s frozen modules compute with batch norm folded into their convolutions.

    ``frozen``: modules of ``net`` that stay in eval mode with no gradients while it trains.
    ``probe``: an input batch for the check (default: two random 64-px images on the
    network's device). Yields the number of batch norms folded (0 when there was nothing to
    fold or the check failed). Everything is restored on exit.
    """
    frozen = list(frozen)
    pairs = _pairs(net, frozen)
    if not pairs:
        yield 0
        return
    param = next(net.parameters())
    if probe is None:
        g = torch.Generator().manual_seed(0)
        probe = torch.randn(2, 3, 64, 64, generator=g).to(param.device)
    was_training = net.training
    net.eval()
    with torch.no_grad():
        before = net(probe).float()
    saved_params = [(conv, conv._parameters["weight"], conv._parameters.get("bias")) for conv, _ in pairs]
    bn_ids = {id(bn) for _, bn in pairs}
    # Every place a batch norm is registered (a stage may also be listed in a grouping Sequential).
    slots = [(parent, name, child) for parent in net.modules() for name, child in parent._modules.items()
             if child is not None and id(child) in bn_ids]
    try:
        with torch.no_grad():
            for conv, bn in pairs:  # frozen weights: the fused Parameters need no gradient either
                conv._parameters["weight"], conv._parameters["bias"] = fuse_conv_bn_weights(
                    conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        for parent, name, _ in slots:
            parent._modules[name] = nn.Identity()
        with torch.no_grad():
            after = net(probe).float()
        scale = before.abs().max().item()
        ok = bool(torch.isfinite(after).all()) and (after - before).abs().max().item() <= rtol * max(scale, 1e-6)
        if not ok:
            log.warning("batch norm folding changed the outputs (max difference %.3g of %.3g): training unfolded",
                        (after - before).abs().max().item(), scale)
            _restore(saved_params, slots)
            saved_params, slots = [], []
        net.train(was_training)
        log.debug("folded %d batch norms into the frozen convolutions", len(pairs) if ok else 0)
        yield len(pairs) if ok else 0
    finally:
        _restore(saved_params, slots)
        net.train(was_training)


def _restore(saved_params, slots) -> None:
    for conv, weight, bias in saved_params:
        conv._parameters["weight"] = weight
        conv._parameters["bias"] = bias
    for parent, name, child in slots:
        parent._modules[name] = child
