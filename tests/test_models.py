"""The backbone registry, the strategy table, and the networks they build."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xfer import ConfigError, TrainConfig, WeightsError
from xfer.nets.registry import get_backbone, list_backbones, load_pretrained, load_state_dict_file, pretrained_available
from xfer.nets.strategies import STRATEGIES, NetworkSpec, build_network, make_spec, param_groups

TORCHVISION = ["vgg16", "resnet18", "resnet50", "efficientnet_b0", "mobilenet_v3_large", "convnext_tiny"]


def test_registry_lists_vgg16_first_and_the_others():
    names = list_backbones()
    assert names[0] == "vgg16"
    assert set(TORCHVISION) <= set(names)
    with pytest.raises(ConfigError, match="choose one of"):
        get_backbone("alexnet9000")


def test_register_refuses_a_name_already_taken():
    from dataclasses import replace

    from xfer.nets.registry import register

    with pytest.raises(ConfigError, match="'resnet18' is already registered"):
        register(replace(get_backbone("resnet18"), title="another ResNet-18"))
    assert get_backbone("resnet18").title.startswith("ResNet-18")  # the first entry stays


def test_weights_location_is_the_download_and_its_hub_cache_path(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    where = get_backbone("resnet18").weights_location()
    assert where.url.startswith("https://") and where.url.endswith("/resnet18-f37072fd.pth")
    assert where.path == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert get_backbone("efficientnet_lite0").weights_location() is None  # shipped in a package, not downloaded


@pytest.mark.parametrize("name", TORCHVISION)
def test_weights_carry_preprocessing_and_labels(name):
    b = get_backbone(name)
    pre = b.get_preprocessing()
    assert pre.crop_size == 224 and pre.resize_size >= 224 and len(pre.mean) == 3
    assert len(b.get_categories()) == 1000
    assert pre.for_size(112).crop_size == 112 and pre.for_size(112).resize_size == round(112 * pre.resize_size / 224)


def test_strategy_table_is_complete():
    assert list(STRATEGIES) == ["head", "truncate", "finetune", "scratch"]
    for s in STRATEGIES.values():
        assert s.title and s.summary and len(s.explanation) > 100
    assert STRATEGIES["head"].frozen and STRATEGIES["truncate"].frozen
    assert not STRATEGIES["finetune"].frozen and not STRATEGIES["scratch"].pretrained
    assert STRATEGIES["truncate"].keep == "early" and STRATEGIES["truncate"].hidden


# Every strategy on two small backbones; the frozen ones (cheap: no backward through the body) on all.
CASES = [(b, s) for b in ("resnet18", "mobilenet_v3_large") for s in STRATEGIES] + [
    (b, s) for b in ("efficientnet_b0", "convnext_tiny", "vgg16", "resnet50") for s in ("head", "truncate")]


@pytest.mark.parametrize("backbone,strategy", CASES)
def test_strategy_freezes_what_it_says_and_output_width(backbone, strategy):
    torch.manual_seed(0)
    net = build_network(make_spec(backbone, strategy, num_classes=3))
    s = STRATEGIES[strategy]
    # finetune keeps the backbone's first stages frozen; the other training strategy (scratch) none.
    assert len(net.frozen_parts) == (get_backbone(backbone).finetune_frozen if s.early_frozen else 0)
    early = {id(p) for part in net.frozen_parts for p in part.parameters()}
    assert bool(early) == s.early_frozen and len(early) < len(list(net.body.parameters()))

    def frozen(p):
        return s.frozen or id(p) in early

    assert all(p.requires_grad != frozen(p) for p in net.body.parameters())
    assert all(p.requires_grad for p in net.head.parameters())
    net.train()
    assert net.body.training is not s.frozen  # a frozen body stays in eval mode
    assert not any(m.training for part in net.frozen_parts for m in part.modules())  # so do frozen stages
    x = torch.randn(2, 3, 32, 32)
    out = net(x)
    assert out.shape == (2, 3)
    out.sum().backward()
    for p in net.body.parameters():
        assert (p.grad is None) == frozen(p)
    assert all(p.grad is not None for p in net.head.parameters())


def test_finetune_frozen_stages_default_override_and_errors():
    b = get_backbone("resnet18")
    assert make_spec("resnet18", "finetune", 3).frozen_stages == b.finetune_frozen == 2
    assert make_spec("resnet18", "finetune", 3, frozen_stages=0).frozen_stages == 0
    assert make_spec("resnet18", "scratch", 3).frozen_stages == 0
    assert make_spec("resnet18", "head", 3, frozen_stages=3).frozen_stages == 0  # the whole body is frozen anyway
    with pytest.raises(ConfigError, match="between 0 and 4"):
        make_spec("resnet18", "finetune", 3, frozen_stages=5)
    with pytest.raises(ConfigError, match="random weights"):
        make_spec("resnet18", "scratch", 3, frozen_stages=1)
    # Every layer trains with 0; a saved spec carries the number, and one saved before it existed means 0.
    everything = build_network(make_spec("resnet18", "finetune", 3, frozen_stages=0))
    assert not everything.frozen_parts and all(p.requires_grad for p in everything.parameters())
    spec = make_spec("resnet18", "finetune", 3, frozen_stages=1)
    assert NetworkSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in spec.to_dict().items() if k != "frozen_stages"}
    assert NetworkSpec.from_dict(old).frozen_stages == 0


def test_frozen_stages_keep_their_weights_and_statistics_through_a_step():
    torch.manual_seed(0)
    net = build_network(make_spec("resnet18", "finetune", 3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    net.train()
    net(torch.randn(4, 3, 32, 32)).sum().backward()
    opt.step()
    after = net.state_dict()
    early = ("body.conv1.", "body.bn1.", "body.layer1.")  # resnet's stem and layer1
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and not {k for k in changed if k.startswith(early)}
    assert "body.layer2.0.bn1.running_mean" in changed and "body.layer4.1.conv2.weight" in changed


def test_truncate_keeps_only_early_stages():
    full = build_network(make_spec("resnet18", "head", 4))
    cut2 = build_network(make_spec("resnet18", "truncate", 4, cut=2))
    assert sum(p.numel() for p in cut2.body.parameters()) < sum(p.numel() for p in full.body.parameters()) / 10
    assert isinstance(cut2.head[1], nn.Linear) and cut2.head[1].in_features == 64  # layer1 width
    with pytest.raises(ConfigError, match="between 1 and 4"):
        make_spec("resnet18", "truncate", 4, cut=5)


def test_truncated_body_is_what_truncate_trains_on():
    from xfer.nets.strategies import backbone_network, classifier_layer, truncated_body

    full = backbone_network("resnet18")
    assert classifier_layer("resnet18", full) is full.fc and full.fc.out_features == 1000
    body = truncated_body("resnet18", full, 2)
    assert body[1] is full.layer1  # shares the network's modules
    assert body.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 64)
    net = build_network(make_spec("resnet18", "truncate", 4, cut=2))
    assert [type(m) for m in net.body] == [type(m) for m in body]


def test_finetune_body_learns_slower_than_head():
    net = build_network(make_spec("resnet18", "finetune", 3))
    lrs = {g["lr"] for g in param_groups(net, "finetune", 1e-3, 1e-4)}
    assert lrs == {1e-3, 1e-4}
    assert {g["lr"] for g in param_groups(net, "finetune", 1e-3, 1e-4, body_lr=5e-4)} == {1e-3, 5e-4}
    with pytest.raises(ConfigError, match="body's learning rate"):
        TrainConfig(body_lr=0.0).validate()
    head_only = build_network(make_spec("resnet18", "head", 3))
    for body_lr in (None, 1e-3):  # a frozen body never trains, whatever its learning rate says
        groups = param_groups(head_only, "head", 1e-3, 1e-4, body_lr=body_lr)
        assert sum(len(g["params"]) for g in groups) == len(list(head_only.head.parameters()))


def test_reinit_resets_the_last_layers():
    torch.manual_seed(0)
    a = build_network(make_spec("resnet18", "finetune", 3))
    b_state = {k: v.clone() for k, v in a.body.state_dict().items()}
    from xfer.nets.strategies import reinit_last_layers

    assert reinit_last_layers(a.body, 2) == 2
    changed = [k for k, v in a.body.state_dict().items() if not torch.equal(v, b_state[k])]
    assert changed and all(k.startswith("layer4.1.") for k in changed)


def test_local_weights_file_loads_and_mismatch_is_clear(tmp_path):
    src = get_backbone("resnet18").make()
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    net = build_network(make_spec("resnet18", "head", 3), weights=tmp_path / "r18.pth")
    assert torch.equal(net.body.conv1.weight, src.conv1.weight)
    torch.save(get_backbone("mobilenet_v3_large").make().state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(WeightsError, match="do not fit resnet18"):
        build_network(make_spec("resnet18", "head", 3), weights=tmp_path / "wrong.pth")
    with pytest.raises(WeightsError, match="does not exist"):
        load_state_dict_file(tmp_path / "missing.pth")


def test_pickle_weights_are_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Evil()}, tmp_path / "evil.pth", _use_new_zipfile_serialization=True)
    with pytest.raises(WeightsError):
        load_state_dict_file(tmp_path / "evil.pth")
    assert not marker.exists()


def test_offline_imagenet_weights_give_actionable_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    import torch.hub as th

    def offline(*a, **k):
        raise OSError("Temporary failure in name resolution")
    monkeypatch.setattr(th, "download_url_to_file", offline)
    assert not pretrained_available("vgg16")
    with pytest.raises(WeightsError) as e:
        load_pretrained(get_backbone("resnet18").make(), "resnet18", "imagenet")
    msg = str(e.value)
    assert "resnet18-f37072fd.pth" in msg and str(tmp_path / "hub" / "checkpoints") in msg and "--weights none" in msg


@pytest.mark.parametrize("name", list_backbones())
def test_a_body_cut_after_any_stage_computes_what_the_whole_body_does(name):
    from xfer.nets.strategies import backbone_network, split_body

    torch.manual_seed(0)
    b = get_backbone(name)
    full = backbone_network(name)
    full.set_submodule(b.head, nn.Identity())
    full.eval()
    x = torch.randn(2, 3, 64, 64)
    n = b.num_stages
    with torch.no_grad():
        want = full(x)
        for cut in sorted({1, 2, b.finetune_frozen, b.default_cut, n // 2, n - 2, n - 1} & set(range(1, n))):
            first, rest = split_body(name, full, cut)
            assert torch.allclose(rest(first(x)), want, rtol=1e-4, atol=1e-5), cut
    assert split_body(name, full, 0) is None and split_body(name, full, n) is None


def test_finetune_splits_its_body_after_the_frozen_stages():
    net = build_network(make_spec("resnet18", "finetune", 3, frozen_stages=2))
    first, rest = net.split
    # The frozen stages, their very parameters.
    assert [id(p) for p in first.parameters()] == [id(p) for m in net.frozen_parts for p in m.parameters()]
    assert rest[0] is net.body.layer2 and not any(p.requires_grad for p in first.parameters())
    assert all(p.requires_grad for p in rest.parameters())
    assert build_network(make_spec("resnet18", "finetune", 3, frozen_stages=0)).split is None
    assert build_network(make_spec("resnet18", "head", 3)).split is None  # the whole body is frozen: no cut
