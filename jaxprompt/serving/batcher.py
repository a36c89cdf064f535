"""The worker between the HTTP handlers and the engine: requests wait in a bounded queue, one
thread steps them through `Scheduler` (continuous batching), and each handler is woken with its
completion or its streamed tokens. A client that disconnects frees its place or its slot.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

from jaxprompt.serving.options import BadRequest

# ---- the batching worker ------------------------------------------------------------------------

@dataclasses.dataclass
class Pending:
    requests: list  # inference.Request, one per prompt of the HTTP request
    served: object
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    cancelled: bool = False
    tickets: list = dataclasses.field(default_factory=list)  # its rows in the scheduler, once admitted
    updates: asyncio.Queue | None = None  # streamed: (row, its tokens so far) after each step, then None
    pushed: list = dataclasses.field(default_factory=list)  # streamed: how many tokens of each row were pushed
    arrived: float = dataclasses.field(default_factory=time.monotonic)
    first_token: float | None = None  # when its first token was decoded


class Batcher:
    """A bounded queue and one thread stepping the engine's continuous scheduler (Orca, Yu et al.
    2022): queued requests join the running rows at the next decode step that has room for them."""

    def __init__(self, engine, max_queue: int, max_batch: int, wait_s: float):
        from jaxprompt.inference.scheduler import Scheduler

        self.engine, self.max_queue, self.max_batch, self.wait_s = engine, max_queue, max_batch, wait_s
        self.scheduler = Scheduler(engine, max_batch)
        self._queue: list[Pending] = []
        self._active: list[Pending] = []  # admitted into the scheduler, not answered yet
        self._cv = threading.Condition()
        self._stop = False
        self.thread = threading.Thread(target=self._run, name="jaxprompt-batcher", daemon=True)
        self.thread.start()

    def submit(self, pending: Pending) -> None:
        with self._cv:
            if len(self._queue) >= self.max_queue:
                raise BadRequest(f"too many queued requests ({self.max_queue}); retry later", 429,
                                 kind="rate_limit_error")
            self._queue.append(pending)
            self._cv.notify()

    @property
    def running(self) -> int:
        """Requests admitted into the scheduler, not answered yet."""
        return len(self._active)

    @property
    def waiting(self) -> int:
        """Requests queued, not yet admitted."""
        return len(self._queue)

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self.thread.join(timeout=30)

    def _take(self) -> bool:
        """Moves queued requests into the scheduler while it has room; False when stopping and idle.
        An idle scheduler first waits `wait_s` for more requests (admitted by one prefill)."""
        with self._cv:
            while not self._queue and not self._active and not self._stop:
                self._cv.wait()
            if self._stop and not self._queue and not self._active:
                return False
            if not self._active:
                deadline = time.monotonic() + self.wait_s
                while sum(len(p.requests) for p in self._queue) < self.max_batch and time.monotonic() < deadline:
                    self._cv.wait(max(0.0, deadline - time.monotonic()))
            while self._queue and (not self._active
                                   or self.scheduler.load + len(self._queue[0].requests) <= self.max_batch):
                p = self._queue.pop(0)
                if not p.cancelled:  # a client that went away frees its place before decoding
                    p.tickets = [self.scheduler.submit(r, p.served) for r in p.requests]
                    self._active.append(p)
            return True

    def _run(self) -> None:
        while self._take():
            for p in self._active:
                if p.cancelled:  # a client that went away frees its slots at the next step
                    for t in p.tickets:
                        self.scheduler.cancel(t)
            self._active = [p for p in self._active if not p.cancelled]
            try:
                self.scheduler.step()
            except Exception as e:  # never expected (the scheduler fails rows, not itself): answer, go on
                for p in self._active:
                    self._answer(p, e)
                self._active = []
            now = time.monotonic()
            for p in self._active:
                if p.first_token is None and any(t.tokens or t.finished for t in p.tickets):
                    p.first_token = now
                self._push(p)
            for p in [p for p in self._active if all(t.finished for t in p.tickets)]:
                self._active.remove(p)
                error = next((t.error for t in p.tickets if t.error is not None), None)
                self._answer(p, error if error is not None else [t.completion for t in p.tickets])

    @staticmethod
    def _push(p: Pending) -> None:
        """A streamed request's rows that decoded a token this step: their tokens so far."""
        if p.updates is None:
            return
        p.pushed = p.pushed or [0] * len(p.tickets)
        for j, t in enumerate(p.tickets):
            if len(t.tokens) > p.pushed[j]:
                p.pushed[j] = len(t.tokens)
                p.loop.call_soon_threadsafe(p.updates.put_nowait, (j, list(t.tokens)))

    @staticmethod
    def _answer(p: Pending, result) -> None:
        def set_result():
            if not p.future.done():
                (p.future.set_exception if isinstance(result, Exception) else p.future.set_result)(result)
            if p.updates is not None:
                p.updates.put_nowait(None)

        p.loop.call_soon_threadsafe(set_result)
