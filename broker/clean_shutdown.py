"""The clean-shutdown marker of a broker's log directory (KIP-966).

A broker that stops gracefully, after closing (and so syncing) every partition log,
leaves `clean-shutdown` holding the broker epoch it had. On the next start the marker
is read and removed before any log is opened for writing: a node that then crashes
finds no marker and registers as having shut down uncleanly, so the controller keeps
it out of ISRs and eligible leader replicas until it has caught up, since it may have
lost writes it had acknowledged but not synced.
"""

from __future__ import annotations

import logging
import os

from storage.checkpoint import read_file, write_atomically
from storage.fs import FileSystem

log = logging.getLogger(__name__)

MARKER_FILE = "clean-shutdown"
UNCLEAN = -1


def take(fs: FileSystem, data_dir: str) -> int:
    """The broker epoch of the last clean shutdown, or UNCLEAN; the marker is gone after."""
    path = os.path.join(data_dir, MARKER_FILE)
    content = read_file(fs, path)
    if content is None:
        return UNCLEAN
    text = content.decode("ascii", "replace").strip()
    fs.remove(path)
    fs.sync_dir(data_dir)
    if not text.isdigit():
        # Not written by a clean stop: counting it unclean is the safe reading.
        log.warning(
            "%s: %r is not a broker epoch; taking the last stop as unclean", path, text[:40]
        )
        return UNCLEAN
    return int(text)


def leave(fs: FileSystem, data_dir: str, broker_epoch: int) -> None:
    """Written last on a graceful stop, once every partition log is closed."""
    write_atomically(fs, os.path.join(data_dir, MARKER_FILE), f"{broker_epoch}\n".encode())
