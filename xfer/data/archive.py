"""Safe zip extraction: no paths outside the destination, no links, bounded size and entry count, zip bombs refused from the headers."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

from ..errors import DataError
from .images import JUNK_NAMES, not_an_image

log = logging.getLogger(__name__)

#: Archives are refused if they would inflate past this many bytes (2 GiB by default).
MAX_EXTRACT_BYTES = int(os.environ.get("XFER_MAX_EXTRACT_BYTES", 2 * 1024**3))
#: ...or hold more entries than this.
MAX_ARCHIVE_FILES = int(os.environ.get("XFER_MAX_ARCHIVE_FILES", 100_000))
#: A member that inflates more than this ratio (and past 1 MB) is a zip bomb, not an image;
#: so is a whole archive that does (past 16 MB): many small bombs instead of one big one.
MAX_COMPRESSION_RATIO = 100
BOMB_MIN_BYTES, BOMB_MIN_TOTAL_BYTES = 1_000_000, 16_000_000


def is_junk(part: str) -> bool:
    return part.startswith(".") or part in JUNK_NAMES


def _safe_member_path(name: str) -> PurePosixPath | None:
    """The member's relative path, or None if it is absolute or climbs out with ``..``."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return PurePosixPath(*parts)


def _undo(dest: Path, fresh: bool, created: list[Path]) -> None:
    """Remove what a failed extraction wrote: all of ``dest`` if it made it, else only its own files."""
    if fresh:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for path in reversed(created):  # files before the folders that hold them
        with contextlib.suppress(OSError):
            path.rmdir() if path.is_dir() else path.unlink()


def _too_big(max_bytes: int) -> DataError:
    return DataError(f"The archive inflates past the {max_bytes // 2**20} MB limit: upload less data.")


def _refuse_from_headers(infos: list[zipfile.ZipInfo], max_bytes: int, max_files: int) -> None:
    """Refuse an archive before anything is written: too many entries, too large, or a zip bomb.

    The sizes come from the headers, which may lie; the bytes written are counted again.
    """
    if len(infos) > max_files:
        raise DataError(f"The archive holds {len(infos)} entries, over the limit of {max_files}.")
    for info in infos:
        if info.file_size > BOMB_MIN_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise DataError(
                f"{info.filename} inflates {info.file_size // max(info.compress_size, 1)}x "
                "(a zip bomb?): the archive was refused."
            )
    total = sum(i.file_size for i in infos if not i.is_dir())
    packed = max(sum(i.compress_size for i in infos if not i.is_dir()), 1)
    if total > max_bytes:
        raise _too_big(max_bytes)
    if total > BOMB_MIN_TOTAL_BYTES and total > MAX_COMPRESSION_RATIO * packed:
        raise DataError(f"The archive inflates {total // packed}x in total (a zip bomb?): it was refused.")


def _member_path(info: zipfile.ZipInfo, keep: Callable[[PurePosixPath], str | None] | None = None
                 ) -> tuple[PurePosixPath | None, str | None]:
    """(the member's relative path, None), or (None, why it is skipped); (None, None): junk, ignored."""
    rel = _safe_member_path(info.filename)
    if rel is None:
        return None, "unsafe path (absolute or ..), skipped"
    if any(is_junk(p) for p in rel.parts):
        return None, None
    if stat.S_ISLNK(info.external_attr >> 16):
        return None, "symbolic link, skipped"
    if keep is not None and (why := keep(rel)) is not None:
        return None, why
    return rel, None


def keep_images(rel: PurePosixPath) -> str | None:
    """For :func:`extract_zip`'s ``keep``: image files only (None), anything else with the reason it is skipped."""
    return not_an_image(rel.suffix)


def _create(dest: Path, target: Path, created: list[Path]) -> BinaryIO | str:
    """The new file ``target`` (and its folders) open for writing, or why it cannot be created."""
    try:
        for d in reversed(target.relative_to(dest).parents[:-1]):
            if not (dest / d).exists():
                (dest / d).mkdir()
                created.append(dest / d)
        out = open(target, "xb")  # never overwrites: a name is written once
        created.append(target)
        return out
    except FileExistsError:
        return "a file of this name is already there, skipped"
    except OSError as e:
        if e.errno not in (errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ):
            raise
        return "file name not allowed on this system, skipped"


def _write_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, rel: PurePosixPath, dest: Path,
                  created: list[Path], written: int, max_bytes: int) -> tuple[int, str | None]:
    """Write one member at ``dest/rel``; returns the archive's bytes written so far and a skip reason (or None)."""
    target = dest.joinpath(*rel.parts)
    if not target.resolve().is_relative_to(dest.resolve()):
        return written, "unsafe path, skipped"
    out = _create(dest, target, created)
    if isinstance(out, str):
        return written, out
    with zf.open(info) as src, out:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > max_bytes:
                raise _too_big(max_bytes)
            out.write(chunk)
    return written, None


def _extract_members(zf: zipfile.ZipFile, dest: Path, created: list[Path], max_bytes: int,
                     keep: Callable[[PurePosixPath], str | None] | None) -> list[tuple[str, str]]:
    skipped: list[tuple[str, str]] = []
    written = 0
    for info in zf.infolist():
        if info.is_dir():
            continue
        rel, reason = _member_path(info, keep)
        if rel is not None:
            if written + info.file_size > max_bytes:
                raise _too_big(max_bytes)
            written, reason = _write_member(zf, info, rel, dest, created, written, max_bytes)
        if reason is not None:
            skipped.append((info.filename, reason))
    return skipped


def extract_zip(archive: str | os.PathLike, dest: str | os.PathLike,
                max_bytes: int = MAX_EXTRACT_BYTES, max_files: int = MAX_ARCHIVE_FILES,
                keep: Callable[[PurePosixPath], str | None] | None = None) -> list[tuple[str, str]]:
    """Extract a zip into ``dest`` safely; return the (member, reason) pairs that were skipped.

    ``keep(relative path)`` returns None for a member to extract, else why it is skipped (e.g.
    :func:`keep_images`): a served or shared folder then never holds a visitor's HTML or SVG.

    Never writes outside ``dest``: absolute paths, ``..`` entries and symlinks are
    skipped. Junk (``__MACOSX/``, dot files) is ignored. An archive that would inflate
    past ``max_bytes`` (counted while writing, not trusted from its headers), or that
    holds a member (or is as a whole) compressed suspiciously well, is refused from its
    headers before anything is written. Members whose names the file system refuses (too
    long) are skipped.
    """
    dest = Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise DataError(f"{Path(archive).name} is not a zip archive: upload a .zip of one folder per class.") from None
    except OSError as e:
        raise DataError(f"Cannot read {Path(archive).name}: {e.strerror or e}.") from None
    with zf:
        _refuse_from_headers(zf.infolist(), max_bytes, max_files)
        # On failure only what this call created is removed: a dest that existed keeps its other files.
        fresh = not dest.exists()
        dest.mkdir(parents=True, exist_ok=True)
        created: list[Path] = []
        try:
            skipped = _extract_members(zf, dest, created, max_bytes, keep)
        except DataError:
            _undo(dest, fresh, created)
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as e:
            _undo(dest, fresh, created)
            raise DataError(f"The archive is damaged or unsupported ({type(e).__name__}: {e}): re-create it.") from None
    for name, reason in skipped:
        log.warning("%s: %s", name, reason)
    return skipped
