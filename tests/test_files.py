"""Atomic writes and the run-directory lock."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from jaxprompt.files import TEMP_SUFFIX, DirectoryLock, LockedError, atomic_write, remove_stale_temporaries


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    atomic_write(str(target), '{"old": 1}')

    def disk_full(path):
        with open(path, "w") as f:
            f.write('{"new": ')
        raise OSError(errno.ENOSPC, "No space left on device", path)

    with pytest.raises(OSError, match="No space left"):
        atomic_write(str(target), disk_full)
    assert target.read_text() == '{"old": 1}' and os.listdir(tmp_path) == ["results.json"]


def test_concurrent_writers_never_share_a_temporary(tmp_path):
    target, seen = str(tmp_path / "entry"), set()
    barrier = threading.Barrier(8)

    def writer(i):
        def write(path):
            seen.add(path)
            barrier.wait(timeout=30)  # all eight hold their temporary at once
            with open(path, "w") as f:
                f.write(str(i) * 1000)
        atomic_write(target, write)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8
    text = open(target).read()
    assert len(text) == 1000 and len(set(text)) == 1  # one writer's whole file, never a mixture


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / f".results.json.abc{TEMP_SUFFIX}").write_text("half")
    (tmp_path / "keep.json").write_text("{}")
    remove_stale_temporaries(str(tmp_path))
    assert os.listdir(tmp_path) == ["keep.json"]


def test_the_lock_is_exclusive_and_dies_with_its_process(tmp_path):
    with DirectoryLock(str(tmp_path)):
        with pytest.raises(LockedError, match="in use by another jaxprompt process"):
            DirectoryLock(str(tmp_path))
    DirectoryLock(str(tmp_path)).release()  # released: free again
    holder = textwrap.dedent(f"""
        import os, sys, time
        from jaxprompt.files import DirectoryLock
        lock = DirectoryLock({str(tmp_path)!r})
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError):
            DirectoryLock(str(tmp_path))
    finally:
        proc.kill()
        proc.wait()
    DirectoryLock(str(tmp_path)).release()  # a killed holder leaves no lock behind
