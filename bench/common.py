"""Helpers shared by the bench scripts: data subsets, arms in subprocesses, peak memory, tables.

Bench scripts print numbers; they never assert. Each arm of a comparison can run in
its own subprocess so that its peak memory (RSS high-water mark) is its own.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]

SHARED_FLOWERS = Path(os.environ.get("XFER_FLOWERS_DIR") or ROOT.parent / "shared" / "flowers" / "train")
RESULT_PREFIX = "BENCH-RESULT "


def flowers_root() -> Path:
    """The flower photos: ``XFER_FLOWERS_DIR`` or ``../shared/flowers/train``, else xfer's cached/downloaded set."""
    if os.environ.get("XFER_FLOWERS_DIR") or SHARED_FLOWERS.is_dir():
        return SHARED_FLOWERS
    from xfer.data import flowers_dir

    return flowers_dir()


def write_text(path: Path, text: str) -> None:
    """Write a result file (its folder made if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")


def publish(lines: Sequence[str], out: Path | None) -> int:
    """Print a markdown report and, with ``out``, also write it there; the exit status (0)."""
    md = "\n".join(lines)
    print(md)
    if out:
        write_text(out, md)
    return 0


def loadavg() -> str:
    """The 1-minute load average, to print beside timings on a shared machine."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def peak_rss_mb() -> dict[str, float]:
    """High-water marks of resident memory in MB: this process, and its finished children
    (e.g. DataLoader workers), as the kernel reports them (ru_maxrss is in KB on Linux)."""
    scale = 1 / 1024 if platform.system() == "Linux" else 1 / 2**20
    return {"self_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1),
            "children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale, 1)}


def class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def balanced_subset(root: Path, total: int, offset: int = 0) -> list[tuple[Path, int]]:
    """``total`` images spread evenly over the class folders of ``root``, the same every run."""
    classes = class_folders(root)
    per = max(1, total // len(classes))
    items = []
    for label, folder in enumerate(classes):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        items += [(p, label) for p in files[offset : offset + per]]
    return items


def run_arm(script: Path, args: Sequence[str], timeout: float | None = None) -> dict:
    """Run ``script --arm ...`` in a fresh interpreter; return the JSON it printed last."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"arm {' '.join(args)} failed with exit code {proc.returncode}")
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result["wall_s"] = round(time.perf_counter() - t, 1)
    return result


def emit(result: dict) -> None:
    """How an arm hands its numbers to the parent."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, cells[1:])])
