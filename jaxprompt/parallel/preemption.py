"""Stopping training at one step in every process: SIGTERM, SIGINT and JAX's preemption notices.

A scheduler ends a job with SIGTERM and kills it a little later (SLURM: `--signal=B:TERM@120`;
a TPU VM's preemption notice reaches its processes as SIGTERM); Ctrl-C is SIGINT. During the
training steps such a signal does not end the process: the loop finishes the step it is in,
commits a checkpoint of it and raises `Stopped`, so nothing is lost and `--resume` continues to
the result of an uninterrupted run. Before the steps (loading, the first compilation) and after
them (evaluation), and for a second signal before that checkpoint is committed, the command ends
at once instead (cli/main.py), keeping the last committed checkpoint.

One process stops at its next step boundary. The processes of a multi-process run must stop at
the same step, since every step is collective. They agree as JAX's preemption sync point does
(`multihost_utils.reached_preemption_sync_point`), through the coordination service: the process
that took a signal posts a notice; a thread in every process, waiting for it, posts the step its
loop has reached and meets the others at a barrier, holding the loop back meanwhile; all settle
on the step after the furthest one. The loop asks at every step: a lock, no collective, nothing
measurable per step. The notice is jaxprompt's own because JAX's is SIGTERM only, taken in C++
before Python sees it (with a log line, and never "at once"); the command line takes SIGTERM
back (`reclaim_sigterm`), and JAX's sync point is still asked, for a notice that reaches a
process some other way (a Python program without the command line keeps JAX's handler).

This module imports no JAX at import time: the command line's signal watcher uses it before JAX
is loaded.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import sys
import threading

# what a shell reports for a process these signals ended: 128 + the signal's number
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
KEY = "jaxprompt/stop/"
BARRIER_MS = 300_000  # every process meets within this (a lost one: the watchdog ends the others first)


class Stopped(Exception):
    """Training stopped on a signal after `step`, whose checkpoint is committed. `signum`: the
    signal this process received; None where the notice came from process `sender`."""

    def __init__(self, step: int, signum: int | None, sender: tuple[int, int] | None = None):
        self.step, self.signum, self.sender = step, signum, sender
        super().__init__(f"stopped by {self.cause} at step {step}")

    @property
    def cause(self) -> str:
        if self.signum:
            return signal.Signals(self.signum).name
        if self.sender:
            return f"{signal.Signals(self.sender[1]).name} to process {self.sender[0]}"
        return "a preemption notice"

    @property
    def exit_code(self) -> int:
        """That of the signal that stopped the run, in every process."""
        signum = self.signum or (self.sender[1] if self.sender else signal.SIGTERM)
        return EXIT_CODES.get(signum, EXIT_CODES[signal.SIGTERM])


class _Steps:
    """What the signal watcher (another thread) and the training loop share."""

    taking = False  # the loop runs steps: a signal stops it at the next step boundary
    signum: int | None = None  # the signal this process took


_steps = _Steps()


def take(signum: int) -> bool:
    """Called by the command's signal watcher: whether the training loop takes the signal (it stops
    at its next step boundary). False outside the steps and for a second signal: the command then
    ends at once."""
    if not _steps.taking or _steps.signum is not None:
        return False
    _steps.signum = signum
    if _agreement is not None:
        _agreement.notify(signum)
    return True


def taken() -> int | None:
    """The signal the loop has taken (and is stopping for), if any."""
    return _steps.signum


@contextlib.contextmanager
def steps():
    """The training loop's steps. Signals are taken from `arm()` on (once the first step has
    compiled: a Ctrl-C during a long compilation ends the command at once)."""
    _steps.taking, _steps.signum = False, None
    if _agreement is not None:
        _agreement.restart()
    try:
        yield
    finally:
        _steps.taking = False


def arm() -> None:
    _steps.taking = True


def reached(counter: int) -> bool:
    """Whether every process stops after the `counter`th step of this invocation (1, 2, ...: every
    process counts from the same step)."""
    if _agreement is None:
        return _steps.signum is not None
    ours = _agreement.reached(counter)
    return _agreement.jax_sync_point(counter) or ours  # both asked: JAX's counts every step too


def sender() -> tuple[int, int] | None:
    """(process, signal) of the notice that stopped a multi-process run."""
    return _agreement.sender if _agreement is not None else None


# ---- multi-process ---------------------------------------------------------------------------------

class _Agreement:
    def __init__(self, client, me: int, count: int):
        self.client, self.me, self.count = client, me, count
        self.lock = threading.Lock()  # held while the step is being settled: the loop waits
        self.counter = 0  # the last step counter the loop reported
        self.stop_at: int | None = None
        self.sender: tuple[int, int] | None = None
        self.jax_sync_point = _jax_sync_point()
        self.thread = threading.Thread(target=self._listen, name="jaxprompt-stop-notice", daemon=True)
        self.thread.start()

    def restart(self) -> None:
        with self.lock:
            self.counter = 0

    def notify(self, signum: int) -> None:
        """Posts this process's notice to every process (each waits on its own key)."""
        try:
            for p in range(self.count):
                self.client.key_value_set(f"{KEY}notice/{p}", f"{self.me} {signum}", allow_overwrite=True)
        except Exception:
            pass  # the coordination service is gone: the watchdog reports the lost process

    def reached(self, counter: int) -> bool:
        with self.lock:
            self.counter = counter
            return counter == self.stop_at

    def stop(self) -> None:
        """At exit: wakes the listener and waits for it (a thread inside a call into JAX's runtime
        when the interpreter finalises aborts the process)."""
        try:
            self.client.key_value_set(f"{KEY}notice/{self.me}", "exit", allow_overwrite=True)
        except Exception:
            return  # the service is gone, and with it the listener's call
        self.thread.join(timeout=5)

    def _listen(self) -> None:
        while True:
            try:
                notice = self.client.blocking_key_value_get(f"{KEY}notice/{self.me}", 60_000)
                break
            except Exception:  # no notice yet (a timeout), or the service has shut down
                if not _running():
                    return
        if notice == "exit":
            return
        with self.lock:
            try:
                self.client.key_value_set(f"{KEY}counter/{self.me}", str(self.counter), allow_overwrite=True)
                self.client.wait_at_barrier("jaxprompt-stop", BARRIER_MS)
                counters = [int(v) for _, v in self.client.key_value_dir_get(KEY + "counter/")]
            except Exception:
                return  # a process was lost meanwhile: the watchdog ends this one
            process, signum = (int(x) for x in notice.split())
            self.sender, self.stop_at = (process, signum), max(counters) + 1


_agreement: _Agreement | None = None


def listen() -> None:
    """Starts listening for notices (multi-process, once jax.distributed is initialised)."""
    global _agreement
    import jax
    from jax._src import distributed

    if _agreement is None:
        _agreement = _Agreement(distributed.global_state.client, jax.process_index(), jax.process_count())
        atexit.register(_agreement.stop)  # runs before jax.distributed shuts down (registered after it)


def reclaim_sigterm() -> None:
    """Gives SIGTERM back to the Python handler set before `jax.distributed.initialize`, which
    installed JAX's own (only where one was set: the command line's; call in the main thread)."""
    handler = signal.getsignal(signal.SIGTERM)
    if callable(handler):
        signal.signal(signal.SIGTERM, handler)


def _jax_sync_point():
    """JAX's preemption sync point (`counter -> bool`), or a constant False where JAX runs without
    its preemption service (reached_preemption_sync_point would raise)."""
    from jax._src import distributed
    from jax.experimental import multihost_utils

    if distributed.global_state.preemption_sync_manager is None:
        return lambda counter: False
    return multihost_utils.reached_preemption_sync_point


def _running() -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and jax.distributed.is_initialized()
