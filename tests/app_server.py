"""Start the real app (``python app.py``) as a subprocess for API and browser tests, plus small datasets.

The server gets its own cache folder, a tiny flower subset as "the bundled flowers"
(XFER_FLOWERS_DIR; tests make them, see synthetic_flowers.py) and small defaults (resnet18, 64 px, random weights) so that a
training run takes seconds on two CPU cores.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FIVE_CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")
TEST_DEFAULTS = ["--default-backbone", "resnet18", "--default-image-size", "64", "--default-weights", "none",
                 "--default-epochs", "2", "--default-batch-size", "8", "--default-max-per-class", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_subset(root: Path, source: Path, per_class: int, size: int = 64, classes=FIVE_CLASSES,
                  offset: int = 0) -> Path:
    """A few images per class of a flower dataset, downscaled, in ``root/<class>/``."""
    for cls in classes:
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for p in sorted((source / cls).iterdir())[offset: offset + per_class]:
            with Image.open(p) as im:
                im.convert("RGB").resize((size, size)).save(d / p.name, quality=90)
    return root


def zip_folder(folder: Path, dest: Path) -> Path:
    """Zip ``folder`` as ``<folder name>/<class>/<file>``, the way people zip a dataset."""
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder.parent))
    return dest


class AppServer:
    """``python app.py`` on 127.0.0.1 and a free port; its output goes to ``log_path``."""

    def __init__(self, workdir: Path, flowers: Path | None = None, extra_args: list[str] | None = None,
                 max_train_jobs: int = 1, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "app.log"
        extra_env = env
        env = {**os.environ, "XFER_CACHE_DIR": str(workdir / "cache"), "GRADIO_ANALYTICS_ENABLED": "False",
               "GRADIO_TEMP_DIR": str(workdir / "gradio-tmp"), "PYTHONUNBUFFERED": "1",
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        env.pop("GRADIO_SERVER_NAME", None)
        env.pop("GRADIO_SERVER_PORT", None)
        # "The bundled flowers" are the given folder; without one, a folder that is not there, so that
        # the server never downloads the real photos.
        env["XFER_FLOWERS_DIR"] = str(flowers if flowers is not None else workdir / "no-flowers")
        env.update(extra_env or {})
        args = [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(self.port),
                "--max-train-jobs", str(max_train_jobs), "--device", "cpu", *TEST_DEFAULTS, *(extra_args or [])]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> "AppServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "config", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"app.py did not answer on {self.url} within {timeout:.0f}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def client(server: AppServer):
    """A new gradio_client visitor of the app: its own session, its own downloads folder."""
    from gradio_client import Client

    return Client(server.url, verbose=False, download_files=str(server.workdir / "downloads"))


def paths_below(root: Path) -> list[Path]:
    """Every path below ``root`` (folders and files); what the running app deletes meanwhile (a closed visitor's
    session folder) is passed over, as ``os.walk`` does, where ``Path.rglob`` raises FileNotFoundError."""
    out = []
    for folder, dirs, files in os.walk(root):
        out += [Path(folder, n) for n in dirs + files]
    return out


def files_holding(root: Path, secret: bytes) -> list[Path]:
    """The files below ``root`` whose bytes contain ``secret`` (files deleted meanwhile are passed over)."""
    hits = []
    for p in paths_below(root):
        try:
            if p.is_file() and not p.is_symlink() and secret in p.read_bytes():
                hits.append(p)
        except OSError:
            continue
    return hits

