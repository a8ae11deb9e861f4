"""Write files and folders so that a crash or an error never leaves half of them behind.

Every output of the project goes through these helpers: the data is first written to a
temporary sibling path, then moved into place with one `os.replace`, which is atomic on
POSIX file systems when source and destination are on the same file system.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _default_mode(directory: bool) -> int:
    """Permissions a plain `open`/`mkdir` would give (mkstemp/mkdtemp use 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, _default_mode(directory=False))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    """Serialise `obj` as JSON (UTF-8) and write it atomically to `path`."""
    atomic_write_bytes(path, json.dumps(obj, indent=indent, ensure_ascii=False).encode("utf-8"))


def _owner_tag() -> str:
    """``<host>-<pid>``: who builds a temporary folder (the next run removes it once that pid is gone)."""
    host = re.sub(r"[^A-Za-z0-9_.]+", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(final_dir: Path) -> list[Path]:
    """Remove the temporary siblings of `final_dir` left by killed runs on this machine.

    A folder ``.NAME.tmp-<host>-<pid>-*`` (or ``.old-``) is stale when ``host`` is this machine and
    ``pid`` no longer exists; folders of live runs and of other machines are left alone.

    Returns:
        The removed folders.
    """
    pattern = re.compile(
        rf"^\.{re.escape(final_dir.name)}\.(?:tmp|old)-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+$"
    )
    host = _owner_tag().rsplit("-", 1)[0]
    removed = []
    with contextlib.suppress(OSError):
        for sibling in final_dir.parent.iterdir():
            match = pattern.match(sibling.name)
            if match and match["host"] == host and not _pid_alive(int(match["pid"])) and sibling.is_dir():
                shutil.rmtree(sibling, ignore_errors=True)
                removed.append(sibling)
    return removed


@contextlib.contextmanager
def atomic_directory(final_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary sibling and move it to `final_dir` only on success.

    Args:
        final_dir: Where the finished folder must appear.
        overwrite: Replace an existing `final_dir`. Without it an existing folder is an error,
            raised before any work starts.

    Yields:
        The temporary folder to write into. If the `with` body raises (or the process is
        killed), `final_dir` is left untouched and the temporary folder is removed (or, after
        a kill, left as a hidden `.NAME.tmp-<host>-<pid>-*` sibling that the next run on the
        same `final_dir` removes).
    """
    final_dir = Path(final_dir)
    if final_dir.exists() and not overwrite:
        raise FileExistsError(f"{final_dir} already exists; pass --overwrite to replace it")
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final_dir)
    tag = _owner_tag()
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-{tag}-", dir=final_dir.parent))
    os.chmod(tmp_dir, _default_mode(directory=True))
    try:
        yield tmp_dir
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    if final_dir.exists():
        # Move the old folder aside first so that there is never a moment without a complete one.
        old = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.old-{tag}-", dir=final_dir.parent))
        os.replace(final_dir, old / final_dir.name)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)
