"""Small files that must be replaced atomically: quorum-state, epoch caches, offsets.

`write_atomically` follows the only sequence POSIX makes crash-safe: write a temporary
file, fsync it, rename it over the target, fsync the directory. A reader therefore sees
the old content or the new, never a mix; a leftover temporary file is ignored.
"""

from __future__ import annotations

import posixpath

from storage.fs import FileSystem

TEMP_SUFFIX = ".tmp"


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be parsed: never guess its content."""


def write_atomically(fs: FileSystem, path: str, content: bytes) -> None:
    temp_path = path + TEMP_SUFFIX
    if fs.exists(temp_path):
        fs.remove(temp_path)
    handle = fs.open(temp_path)
    try:
        handle.append(content)
        handle.sync()
    except OSError:
        handle.close()
        fs.remove(temp_path)  # a failed write leaves the old file, and no litter
        raise
    handle.close()
    fs.rename(temp_path, path)
    fs.sync_dir(posixpath.dirname(path) or ".")


def read_file(fs: FileSystem, path: str) -> bytes | None:
    """The whole content of `path`, or None when it does not exist."""
    if not fs.exists(path):
        return None
    handle = fs.open(path, create=False)
    try:
        return handle.read_at(0, handle.size())
    finally:
        handle.close()


def write_offset_file(fs: FileSystem, path: str, offset: int) -> None:
    write_atomically(fs, path, f"0\n{offset}\n".encode())


def read_offset_file(fs: FileSystem, path: str) -> int | None:
    """Offset stored by `write_offset_file`; None if absent; CheckpointError if garbled."""
    content = read_file(fs, path)
    if content is None:
        return None
    lines = content.decode("ascii", errors="replace").split("\n")
    if len(lines) < 2 or lines[0] != "0" or not lines[1].lstrip("-").isdigit():
        raise CheckpointError(f"malformed offset checkpoint {path}: {content[:64]!r}")
    return int(lines[1])
