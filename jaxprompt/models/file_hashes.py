"""Content hashes of a checkpoint's files, computed once and remembered by path, size and mtime.

The prompt cache is keyed by the frozen weights (`Session.fingerprint`). Hashing every weight byte
on every load costs seconds at 1B parameters (and a host copy of every weight); a checkpoint on
disk is instead named by the SHA-256 of each of its files, read once and remembered in a small
JSON table beside the prompt cache. An entry is used only while the file's resolved path, size
and modification time (ns) are the ones it was hashed at; anything else hashes the file again, so
an edited shard gives a new key and a stale cache entry is never served.

As in git's index ("racy git"), a file modified within `RACY_SECONDS` of its hashing is not
remembered: a second write within the filesystem's timestamp granularity could leave size and
mtime unchanged. Files in the Hugging Face Hub cache that resolve to `blobs/<sha256>` are named by
that content hash (the Hub's own) and never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time

from jaxprompt.files import atomic_write

TABLE_NAME = "file-hashes.json"
RACY_SECONDS = 2.0
_HUB_BLOB = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 22

_remembered: dict[str, dict] = {}  # table path (or "" for memory only) -> {path: entry}


def _read_table(table: str | None) -> dict:
    key = table or ""
    if key not in _remembered:
        entries = {}
        if table and os.path.isfile(table):
            try:
                with open(table) as f:
                    entries = json.load(f)
            except (OSError, ValueError):
                entries = {}  # an unreadable table only costs hashing again
        _remembered[key] = entries if isinstance(entries, dict) else {}
    return _remembered[key]


def hash_file(path: str) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str, table: str | None = None) -> str:
    """The SHA-256 of `path`'s content: remembered (in memory, and in the JSON `table` if given)
    while the file keeps its resolved path, size and mtime."""
    real = os.path.realpath(path)
    if _HUB_BLOB.match(os.path.basename(real)) and os.path.basename(os.path.dirname(real)) == "blobs":
        return os.path.basename(real)
    stat = os.stat(real)
    signature = [stat.st_size, stat.st_mtime_ns]
    entries = _read_table(table)
    entry = entries.get(real)
    if entry is not None and entry.get("signature") == signature:
        return entry["sha256"]
    digest = hash_file(real)
    if time.time() - stat.st_mtime_ns / 1e9 > RACY_SECONDS:
        entries[real] = {"signature": signature, "sha256": digest}
        if table:
            os.makedirs(os.path.dirname(table), exist_ok=True)
            atomic_write(table, json.dumps(entries))
    return digest


def directory_digest(directory: str, table: str | None = None) -> str:
    """One hash of every regular file directly in `directory` (names and contents)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        h.update(f"{name}\0{file_digest(path, table)}\0".encode())
    return h.hexdigest()
