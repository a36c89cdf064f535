"""Writing files so that a crash, a full disk or a second writer never leaves a half-written one.

Every file jaxprompt writes goes through `atomic_write`: the bytes go to a temporary file with a
unique name beside the target, are flushed to disk, and replace the target by one rename. A reader
sees the old file or the new one, never a mixture; two writers never share a temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from typing import Callable, Iterator

from jaxprompt.settings import one_line

TEMP_SUFFIX = ".jaxprompt-tmp"


def _file_mode() -> int:
    """The mode `open()` would give a new file (0o666 less the umask); mkstemp's is 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def read_json_object(path: str, error: type[Exception], what: str) -> dict:
    """The JSON object in `path`; an unreadable file, or a JSON value of another kind, is one line
    raised as `error` (`what` names what the file should be)."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise error(f"{path} cannot be read ({one_line(e)})") from None
    if not isinstance(value, dict):
        raise error(f"{path} is not {what} (a JSON object)")
    return value


class LockedError(RuntimeError):
    """A directory another process holds."""


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A unique temporary path beside `path`; on success it replaces `path`, on failure it is removed.

    For writers that want a file name (matplotlib, safetensors, torch.save)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=TEMP_SUFFIX, dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write(path: str, data: str | bytes | Callable[[str], None]) -> None:
    """Writes `data` (text, bytes, or a function that writes a given path) to `path` atomically.

    A target that exists and is not a regular file (/dev/stdout, a FIFO) is written in place:
    replacing it would replace the device."""
    def write(target: str) -> None:
        if callable(data):
            data(target)
        else:
            with open(target, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)

    try:
        if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
            write(path)
        else:
            with atomic_path(path) as tmp:
                write(tmp)
    except OSError as e:
        if e.filename is None or TEMP_SUFFIX in str(e.filename):  # name the file the user knows
            raise OSError(e.errno, e.strerror or str(e), path) from None
        raise


def remove_stale_temporaries(directory: str) -> None:
    """Temporary files a killed writer left behind (never a complete file)."""
    for name in os.listdir(directory):
        if name.endswith(TEMP_SUFFIX):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(directory, name))


class DirectoryLock:
    """An exclusive lock on a directory for the life of this object (`flock` on `<dir>/.lock`).

    The operating system releases it when the process ends, however it ends, so a killed run
    never leaves its directory locked."""

    NAME = ".lock"

    def __init__(self, directory: str):
        self.path = os.path.join(directory, self.NAME)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._fd)
            self._fd = None
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise LockedError(f"{directory} is in use by another jaxprompt process; wait for it to finish "
                                  "or choose another --out") from None
            raise

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DirectoryLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
