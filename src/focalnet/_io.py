"""Small file helpers: every file the library writes goes through `atomic_write`."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp_name: str, path: Path) -> None:
    """Give the finished temporary file the permissions a plain `open` would have, then move it in place."""
    os.chmod(tmp_name, 0o666 & ~_current_umask())
    os.replace(tmp_name, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only once the block succeeds.

    A crash or an exception while writing leaves any previous file at `path` untouched and no
    partial file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp_name)
        _publish(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """`open` for writing, through `atomic_path`; the data is flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def unique_stem(stem: str, used: set[str]) -> str:
    """`stem`, or `stem-1`, `stem-2`, ... when an earlier input of the same run took it (two inputs
    `a/x.png` and `b/x.jpg` would otherwise write over each other's output); records the name in `used`."""
    name, number = stem, 0
    while name in used:
        number += 1
        name = f"{stem}-{number}"
    used.add(name)
    return name


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file holding an object; FileNotFoundError or a ValueError that names the file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no file at {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); the file is damaged, fetch or save it again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data
