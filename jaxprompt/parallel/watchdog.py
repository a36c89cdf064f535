"""Noticing a lost process of a multi-process run before JAX's runtime aborts the others.

When a process of a run dies (its host fails, the scheduler kills it), the others cannot go on:
every step is collective. Left alone, a collective with the lost process fails (gloo: connection
reset) or waits for it (NCCL), and JAX's coordination service, once the process has sent no
heartbeat for `heartbeat_timeout_seconds`, aborts every other process with a C++ check failure and
a stack dump. None of it says which process was lost, or what the run kept.

The watchdog gets there first. Every process writes a beat (a counter) to the coordination
service's key-value store every `interval` seconds and reads everyone's; a process whose beat has
not moved for half the heartbeat timeout is lost. Each survivor then prints one line (`report`,
set by the command line: the lost process, the run's last committed checkpoint, how to continue)
and exits with `LOST`. Process 0, which hosts the coordination service, leaves last: the others
would take its exit for a lost coordinator. A process that ends normally says so before it stops
beating ("done"), so that a slower peer still writing its files does not take it for lost.

What it cannot catch: the loss of process 0 itself. Its coordination service goes with it, and
JAX's runtime ends every other process at once, with its own message (exit 134). JAX 0.10's
`missed_heartbeat_callback` cannot be given from Python: the runtime terminates with
std::bad_cast when it calls one.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from typing import Callable

LOST = 75  # sysexits' EX_TEMPFAIL: a temporary failure; running again (resuming) is expected to work
KEY = "jaxprompt/watchdog/"


def _default_report(what: str) -> str:
    return f"jaxprompt: {what}"


# The line a survivor prints, given what was lost (the command line adds the run and how to continue).
report: dict[str, Callable[[str], str]] = {"line": _default_report}

_watch: _Watch | None = None
_ending: dict[str, bool | None] = {"normal": None}  # how this process ends, where its command said


def start(heartbeat_timeout: float) -> None:
    """Watches every other process of the (initialised) multi-process run, from now until this
    process exits."""
    global _watch
    import jax
    from jax._src import distributed  # the client of the coordination service jax.distributed started

    if _watch is None:
        _watch = _Watch(distributed.global_state.client, jax.process_index(), jax.process_count(),
                        heartbeat_timeout / 2)
        # atexit runs the last registered first: this runs before jax.distributed shuts down
        atexit.register(_watch.stop)


def ending(normal: bool) -> None:
    """The command ends: normally (its work done, or stopped on a signal with every process) or
    not (an error in this process, which its peers should report as lost)."""
    _ending["normal"] = normal


def await_verdict() -> None:
    """Waits (bounded) for the watchdog to find a lost process, where one watches: after a failed
    collective, so that a lost process ends this one with its line rather than with the collective's
    traceback. Returns if none was lost: the failure is something else."""
    if _watch is not None and _watch.verdict.wait(_watch.deadline + 3 * _watch.interval):
        threading.Event().wait()  # forever: the watchdog's thread prints its line and ends the process


class _Watch:
    def __init__(self, client, me: int, count: int, deadline: float):
        self.client, self.me, self.deadline = client, me, deadline
        self.interval = deadline / 10
        now = time.monotonic()
        self.heard = {p: now for p in range(count) if p != me}  # when each peer's beat last moved
        self.answered = now  # when the coordination service last answered
        self.beats: dict[int, str] = {}
        self.done: set[int] = set()  # peers that ended normally
        self.lost_elsewhere: str | None = None  # another survivor's verdict
        self.left: set[int] = set()  # survivors that have exited on a verdict
        self.verdict = threading.Event()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=target, name=f"jaxprompt-watchdog-{target.__name__[1:]}", daemon=True)
                        for target in (self._beat, self._judge)]
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        """At exit: stops beating and judging, and says whether this process ended normally. The
        threads are joined: one inside a call into JAX's runtime when the interpreter finalises
        aborts the process."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=self.deadline)
        normal = _ending["normal"]
        if normal is None:  # no command said: an uncaught exception leaves sys.last_value
            normal = not hasattr(sys, "last_value")
        if normal:
            self._publish(f"beat/{self.me}", "done")

    def _beat(self) -> None:
        """Writes this process's beat and reads everyone's, every interval. A call that fails or
        hangs only delays `answered`: the judge decides from the times."""
        n = 0
        while not self.stopping.wait(self.interval):
            n += 1
            try:
                self.client.key_value_set(f"{KEY}beat/{self.me}", str(n), allow_overwrite=True)
                entries = self.client.key_value_dir_get(KEY)
            except Exception:
                continue
            now = time.monotonic()
            self.answered = now
            for key, value in entries:
                kind, _, who = key[len(KEY):].partition("/")
                if kind == "beat" and int(who) in self.heard:
                    if value == "done":
                        self.done.add(int(who))
                    elif self.beats.get(int(who)) != value:
                        self.beats[int(who)], self.heard[int(who)] = value, now
                elif kind == "lost":
                    self.lost_elsewhere = value
                elif kind == "left":
                    self.left.add(int(who))

    def _judge(self) -> None:
        while not self.stopping.wait(self.interval):
            now = time.monotonic()
            lost = sorted(p for p, t in self.heard.items() if now - t > self.deadline and p not in self.done)
            if now - self.answered > self.deadline:
                what = (f"process 0 (the coordinator) was lost: no answer from it for {self.deadline:.0f} s"
                        if self.me else f"the coordination service stopped answering for {self.deadline:.0f} s")
            elif self.lost_elsewhere:
                what = self.lost_elsewhere
            elif lost:
                what = (f"process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))} of "
                        f"{len(self.heard) + 1} {'were' if len(lost) > 1 else 'was'} lost: no word for "
                        f"{self.deadline:.0f} s")
                self._publish("lost", what)
            else:
                continue
            self._end(what, lost)

    def _end(self, what: str, lost: list[int]) -> None:
        self.verdict.set()
        try:
            line = report["line"](what)
        except Exception:  # the run's note could not be read: the line without it
            line = _default_report(what)
        os.write(2, (line + "\n").encode())
        if self.me == 0:  # the others' runtime would take the coordinator's exit for its loss: leave last
            others = set(self.heard) - set(lost) - self.done
            until = time.monotonic() + self.deadline
            while not others <= self.left and time.monotonic() < until:
                time.sleep(self.interval / 2)
        else:
            self._publish(f"left/{self.me}", "1")
        os._exit(LOST)

    def _publish(self, key: str, value: str) -> None:
        try:
            self.client.key_value_set(KEY + key, value, allow_overwrite=True)
        except Exception:
            pass  # the others reach the same verdict from the beats, a little later
