"""The package's metadata: pins that agree, every subpackage shipped, the console script's target."""

from __future__ import annotations

import re

import pytest

import xfer
from tests.conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _name(requirement: str) -> str:
    """The normalised project name of ``name==version`` (PEP 503: case, runs of -_. are one -)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[=<>!~\[; ]", requirement, maxsplit=1)[0]).lower()


def test_requirements_txt_and_pyproject_pin_the_same_runtime_dependencies():
    deps = _pyproject()["project"]["dependencies"]
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    pins = [ln for ln in lines if ln]
    assert {_name(d): d.split("==")[1] for d in deps} == {_name(p): p.split("==")[1] for p in pins}
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9.+]*", d) for d in deps + pins), "pin exact versions"
    extras = _pyproject()["project"]["optional-dependencies"]
    own = {d for ds in extras.values() for d in ds if d.startswith("xfer[")}  # extras that include others
    assert all("==" in d for ds in extras.values() for d in ds if d not in own), "pin exact versions"
    assert "xfer[onnx]" in extras["test"] and any(_name(d) == "pytest" for d in extras["test"])
    assert "xfer[test]" in extras["dev"] and any(_name(d) == "ruff" for d in extras["dev"])


def test_every_subpackage_is_a_regular_package_that_discovery_finds():
    """setuptools' find (include xfer*) ships folders with an __init__.py only: a new subpackage
    without one would be missing from an installed (non-editable) xfer."""
    setuptools = pytest.importorskip("setuptools")
    found = set(setuptools.find_packages(str(ROOT), include=["xfer*"]))
    with_code = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "xfer").rglob("*.py")
                 if "__pycache__" not in p.parts}
    assert with_code <= found, with_code - found
    assert {"xfer", "xfer.data", "xfer.nets"} <= found


def test_console_script_and_version():
    project = _pyproject()["project"]
    assert project["scripts"] == {"xfer": "xfer.cli:main"}
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "xfer.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", xfer.__version__)
    from xfer.cli import main

    with pytest.raises(SystemExit) as e:  # what `xfer --help` runs; the script exits with main()'s status
        main(["--help"])
    assert e.value.code == 0
    assert main(["inspect", str(ROOT / "no-such-dataset")]) == 1
