"""What a model writer may replace: the one rule every writer of a model folder applies.

``train --out``, ``pull --out``, :func:`xfer.save_model` and :func:`xfer.model.write_model_folder`
replace a folder whole, so they must never take a user's folder for a model: a folder is
replaced only when it is new, empty, or exactly an xfer model folder (its ``config.json``
says it is an xfer model, of any format version, and it holds nothing but the files xfer writes),
and never when it is, contains or lies inside a folder being read (the training data).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from .errors import ConfigError
from .modelconfig import MAX_CONFIG_BYTES, is_xfer_config

#: The files xfer writes into a model folder; a folder holding anything else is not replaced.
MODEL_FOLDER_FILES = frozenset({"config.json", "model.safetensors", "README.md", "model.onnx"})


def _is_xfer_config(path: Path) -> bool:
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_CONFIG_BYTES:
            return False
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable, not JSON, not UTF-8: not ours
        return False
    return is_xfer_config(cfg)  # any format version: an older model folder is still xfer's to replace


def _overlap(out: Path, other: Path) -> bool:
    return out == other or out.is_relative_to(other) or other.is_relative_to(out)


def check_output_folder(out_dir: str | os.PathLike, protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Raise :class:`ConfigError` unless ``out_dir`` may be replaced by a model folder; returns it resolved.

    Allowed: a path that does not exist, an empty folder, or an xfer model folder (an xfer
    ``config.json`` and only the files in :data:`MODEL_FOLDER_FILES`, all regular files).
    Refused: a file, a symlink inside the folder, any other file or sub-folder, and any
    overlap with a path in ``protect`` (the same path, inside it, or holding it). Both sides
    are resolved, symlinks included, so a link cannot hide an overlap.
    """
    out = Path(out_dir).expanduser().resolve()
    for p in protect:
        src = Path(p).expanduser().resolve()
        if _overlap(out, src):
            where = ("is the dataset" if out == src else "is inside the dataset" if out.is_relative_to(src)
                     else "holds the dataset")
            raise ConfigError(f"The output folder {out} {where} {src}: choose an --out outside the data, "
                              "so that saving the model cannot replace your images.")
    if not out.exists():
        return out
    if not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder: choose another --out.")
    try:
        entries = list(os.scandir(out))
    except OSError as e:
        raise ConfigError(f"{out} cannot be read ({e.strerror or e}): choose another --out.") from None
    if not entries:
        return out
    foreign = sorted(e.name for e in entries
                     if e.name not in MODEL_FOLDER_FILES or e.is_symlink() or not e.is_file(follow_symlinks=False))
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ConfigError(f"{out} holds files xfer did not write ({foreign[0]!r}{more}), so it is not replaced: "
                          "choose a new or empty --out, or remove those files.")
    if not _is_xfer_config(out / "config.json"):
        raise ConfigError(f"{out} is not an xfer model folder (its config.json is missing or not xfer's), so it is "
                          "not replaced: choose a new or empty --out.")
    return out


__all__ = ["MODEL_FOLDER_FILES", "check_output_folder"]
