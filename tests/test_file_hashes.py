"""A checkpoint's content hashes: read once, remembered by path/size/mtime, never stale."""

from __future__ import annotations

import builtins
import hashlib
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxprompt.models import file_hashes
from jaxprompt.models.file_hashes import directory_digest

PAST = 1_600_000_000  # a modification time well outside the "racy" window


def _sharded_checkpoint(directory) -> list[str]:
    rng = np.random.default_rng(0)
    shards = []
    for i in range(3):
        path = os.path.join(directory, f"model-0000{i + 1}-of-00003.safetensors")
        save_file({f"w{i}": rng.standard_normal((64, 64)).astype(np.float32)}, path)
        shards.append(path)
    with open(os.path.join(directory, "config.json"), "w") as f:
        f.write('{"model_type": "llama"}')
    for name in os.listdir(directory):
        os.utime(os.path.join(directory, name), (PAST, PAST))
    return shards


@pytest.fixture
def forget(monkeypatch):
    """A fresh process's view: nothing remembered in memory, only what the table on disk holds."""
    monkeypatch.setattr(file_hashes, "_remembered", {})
    return lambda: monkeypatch.setattr(file_hashes, "_remembered", {})


def _opened(monkeypatch) -> list[str]:
    opened, real_open = [], builtins.open

    def spy(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    return opened


def test_a_second_computation_reads_no_weight_bytes(tmp_path, monkeypatch, forget):
    os.makedirs(tmp_path / "ckpt")
    shards = _sharded_checkpoint(tmp_path / "ckpt")
    table = str(tmp_path / "cache" / file_hashes.TABLE_NAME)
    first = directory_digest(str(tmp_path / "ckpt"), table)
    forget()
    opened = _opened(monkeypatch)
    assert directory_digest(str(tmp_path / "ckpt"), table) == first
    assert not [p for p in opened if p.endswith(".safetensors")], opened
    monkeypatch.undo()
    for shard in shards:  # and what was remembered is each file's real SHA-256
        assert file_hashes.file_digest(shard, table) == hashlib.sha256(open(shard, "rb").read()).hexdigest()


def test_one_changed_byte_in_one_shard_changes_the_key(tmp_path, forget):
    os.makedirs(tmp_path / "ckpt")
    shards = _sharded_checkpoint(tmp_path / "ckpt")
    table = str(tmp_path / "cache" / file_hashes.TABLE_NAME)
    before = directory_digest(str(tmp_path / "ckpt"), table)
    forget()
    data = bytearray(open(shards[1], "rb").read())
    data[-5] ^= 1  # one bit of one weight, same size
    with open(shards[1], "wb") as f:
        f.write(data)
    assert directory_digest(str(tmp_path / "ckpt"), table) != before


def test_a_file_changed_at_its_old_time_is_hashed_again_if_recently_modified(tmp_path, forget):
    """A file written just now is never remembered (its mtime could repeat after another write)."""
    os.makedirs(tmp_path / "ckpt")
    shards = _sharded_checkpoint(tmp_path / "ckpt")
    os.utime(shards[0])  # now: racy
    table = str(tmp_path / "cache" / file_hashes.TABLE_NAME)
    before = directory_digest(str(tmp_path / "ckpt"), table)
    stat = os.stat(shards[0])
    data = bytearray(open(shards[0], "rb").read())
    data[-5] ^= 1
    with open(shards[0], "wb") as f:
        f.write(data)
    os.utime(shards[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    assert directory_digest(str(tmp_path / "ckpt"), table) != before
