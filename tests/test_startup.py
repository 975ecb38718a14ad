"""The fixed cost of a run: what is imported, how networks are built, how weights are written.

Behaviour, not speed (the figures are in bench/results/startup.md): ``import xfer`` and
``--help`` import no torch, ``predict`` no trainer, a network built from loaded weights on the
meta device equals one built the old way, and saved weights load back to identical predictions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import xfer
from tests.conftest import ROOT, make_color_dataset
from xfer.errors import WeightsError
from xfer.nets.registry import get_backbone, load_pretrained
from xfer.nets.strategies import build_network, make_spec

#: Modules a command that does not train must not pay for.
TRAINING_ONLY = ("xfer.engine", "xfer.advisor", "xfer.hub", "xfer.card", "xfer.evaluation", "xfer.data.pipeline",
                 "xfer.nets.fold")
NEVER = ("gradio", "pandas", "matplotlib", "huggingface_hub", "scipy")


def _modules_after(code: str) -> set[str]:
    """The modules loaded in a fresh interpreter once ``code`` has run (the checkout's xfer)."""
    probe = code + "\nimport json, sys\nprint('MODULES ' + json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MODULES ")][-1]
    return set(json.loads(line[len("MODULES "):]))


def _run_cli(*argv: str) -> str:
    return (f"import sys, runpy\nsys.argv = ['xfer', *{list(argv)!r}]\n"
            "try:\n    runpy.run_module('xfer', run_name='__main__')\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\n")


def _heavy(mods: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in mods if m in names or m.split(".")[0] in names)


def test_import_xfer_and_help_import_no_torch():
    for code in ("import xfer", _run_cli("--help"), _run_cli("train", "--help")):
        mods = _modules_after(code)
        assert "torch" not in mods and "torchvision" not in mods, code
        assert not _heavy(mods, TRAINING_ONLY + NEVER), code


def test_public_names_resolve_lazily_to_their_modules():
    from xfer.engine import TrainConfig
    from xfer.model import load_model

    assert xfer.TrainConfig is TrainConfig and xfer.load_model is load_model
    assert all(hasattr(xfer, name) for name in xfer.__all__)
    assert set(xfer.__all__) <= set(dir(xfer))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        xfer.nope  # noqa: B018


def test_bad_backbone_is_still_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "xfer", "train", "--data", "x", "--out", "y", "--backbone", "nope"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "invalid choice: 'nope'" in proc.stderr and "resnet18" in proc.stderr


@pytest.fixture
def saved_model(tmp_path):
    torch.manual_seed(0)
    spec = make_spec("resnet18", "head", 3)
    model = xfer.XferModel(net=build_network(spec), spec=spec, classes=["a", "b", "c"],
                           preprocessing=get_backbone("resnet18").get_preprocessing().for_size(32))
    xfer.save_model(model, tmp_path / "m")
    return model, tmp_path / "m"


def test_predict_imports_no_training_code(saved_model, tmp_path):
    _, folder = saved_model
    image = sorted((make_color_dataset(tmp_path / "img", per_class=1) / "red").iterdir())[0]
    mods = _modules_after(_run_cli("predict", str(folder), str(image)))
    assert "xfer.model" in mods and not _heavy(mods, TRAINING_ONLY + NEVER)


def _old_build(spec, state: dict) -> torch.nn.Module:
    """How build_network made a pretrained network before: random init, then the weights copied in."""
    torch.manual_seed(1)
    net = build_network(spec, weights=None)
    full_state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if spec.strategy == "truncate":
        full = get_backbone(spec.backbone).make()
        full.load_state_dict(state)
        kept = get_backbone(spec.backbone).stages(full)[: spec.cut]
        body = torch.nn.Sequential(*kept)
        net.body[: len(kept)].load_state_dict(body.state_dict())
    else:
        net.body.load_state_dict(full_state)
    return net


@pytest.mark.parametrize("strategy", ["head", "truncate", "finetune"])
def test_meta_built_network_equals_the_old_build(tmp_path, strategy):
    torch.manual_seed(0)
    state = get_backbone("resnet18").make().state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    spec = make_spec("resnet18", strategy, 3)
    new = build_network(spec, weights=tmp_path / "w.safetensors")
    old = _old_build(spec, state)
    old.head.load_state_dict(new.head.state_dict())  # the new head is random either way
    a, b = new.state_dict(), old.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert not any(t.is_meta for t in (*new.parameters(), *new.buffers()))
    assert [p.requires_grad for p in new.parameters()] == [p.requires_grad for p in old.parameters()]
    x = torch.rand(2, 3, 32, 32)
    new.eval(), old.eval()
    with torch.no_grad():
        assert torch.equal(new(x), old(x))


def test_meta_build_casts_a_half_precision_file_and_refuses_a_partial_one(tmp_path):
    state = get_backbone("resnet18").make().state_dict()
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "half.pth")
    net = build_network(make_spec("resnet18", "head", 3), weights=tmp_path / "half.pth")
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert torch.equal(net.body.conv1.weight, state["conv1.weight"].half().float())
    partial = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match="do not fit resnet18"):
        build_network(make_spec("resnet18", "head", 3), weights=tmp_path / "partial.pth")
    meta = get_backbone("resnet18").make_meta()
    with pytest.raises(WeightsError, match="do not fit resnet18"):
        load_pretrained(meta, "resnet18", tmp_path / "partial.pth", assign=True)


def test_channels_last_weights_round_trip_to_identical_predictions(saved_model, tmp_path):
    model, _ = saved_model
    model.net.to(memory_format=torch.channels_last)  # non-contiguous conv weights, as after fit
    assert not model.net.body.conv1.weight.is_contiguous()
    xfer.save_model(model, tmp_path / "cl")
    loaded = xfer.load_model(tmp_path / "cl")
    a, b = model.net.state_dict(), loaded.net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model.net.to(memory_format=torch.contiguous_format)  # the layout changes the conv kernels' last bits
    images = sorted(make_color_dataset(tmp_path / "img", per_class=2).rglob("*.png"))
    assert torch.equal(xfer.predict_proba(model, images), xfer.predict_proba(loaded, images))
