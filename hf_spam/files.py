"""Small file helpers used across the package: the cache folder, atomic writes, Hub-id checks."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from huggingface_hub.utils import HFValidationError, validate_repo_id

CACHE_ENV = "HF_SPAM_CACHE"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where downloads and feature caches live: ``override``, else ``$HF_SPAM_CACHE``, else ``~/.cache/hf_spam``."""
    chosen = override or os.environ.get(CACHE_ENV)
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "hf_spam"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it when the block succeeds and deleted otherwise.

    A reader (or a later run) therefore sees either the old file or the complete new one, never half.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp creates 0600; these files are meant to be read and shared
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_folder(path: str | os.PathLike, keep_name: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``path``, put in its place (replacing an earlier folder there) when the block
    succeeds and deleted otherwise: a half-written folder is never at ``path``. ``keep_name``: the folder
    yielded already has ``path``'s name (inside a hidden temporary one), for writers that name things after it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    old, target = tmp.with_suffix(".old"), tmp / path.name if keep_name else tmp
    try:
        target.mkdir(exist_ok=True)
        yield target
        target.chmod(0o755)  # mkdtemp creates 0700
        if path.exists():
            path.rename(old)
        os.replace(target, path)
    finally:
        if old.exists() and not path.exists():  # the new folder could not be put in place: the old one back
            old.rename(path)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block: processes on one machine that
    share a folder take turns (``fcntl.flock``; where there is no ``fcntl``, no lock)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here
            yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically."""
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def is_hub_id(name: object) -> bool:
    """Whether ``name`` is a valid Hub repo id (``name`` or ``owner/name``) and not a local path."""
    if not isinstance(name, str) or not name or name.startswith((".", "/", "~")) or "\\" in name:
        return False
    if Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True
