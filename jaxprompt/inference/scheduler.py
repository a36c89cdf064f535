"""Continuous (iteration-level) batching for `jaxprompt serve` (Orca, Yu et al. 2022).

B decode slots, each row at its own key/value cache index and its own step: a decode step advances
every running row by one token; a row that ends (EOS, its `max_tokens`, the position table, its
client gone) frees its slot at the next step boundary, and a waiting request is prefilled into that
slot (its prompt's head from the prompt cache, as `Engine.complete` does) while the other rows keep
decoding. A batch no longer runs until its longest row ends, and a request arriving mid-flight no
longer waits for a whole batch.

The device programs are `decode.py`'s own steps (`prefill`, `emit`, `read`, `sample_rows`):
the math of `generate`'s loop, with rows that joined at different steps. Each row attends to its
own cache slots and head only, so a greedy row's tokens equal `Engine.complete` of it alone and a
sampled row draws from its own key and step, whatever shares the slots.

Shapes are bucketed: slots B a power of two up to `max_batch` (grown when requests wait, halved
when the upper half is free), cache slots S = input bucket + new-token bucket (`MIN_INPUT_TOKENS +
MIN_NEW_TOKENS` unless a longer request grows them), head length P a power of two. `warm_up`
compiles every program a stream of short requests can reach. LLaMA-Adapter prompts change every
layer, not the keys/values: their rows keep their own batches (`Engine.complete`), between steps.

Axes: B slots, n rows admitted at once, S cache slots, P head positions, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections import deque

import numpy as np

from jaxprompt.inference.batch import pow2, to_host
from jaxprompt.inference.decode import decoding_form, filler
from jaxprompt.inference.engine import Engine
from jaxprompt.inference.requests import MIN_NEW_TOKENS, Completion, Request
from jaxprompt.inference.served import Row, Served
from jaxprompt.inference.slots import BASE_SLOTS, Slots, _empty, _place, _prefill, _resize, _step, compiled_programs


@dataclasses.dataclass
class Ticket:
    """One request in the scheduler: waiting, running in a slot, or finished (completion or error)."""

    request: Request
    served: Served | None = None
    row: Row | None = None
    tokens: list[int] = dataclasses.field(default_factory=list)
    completion: Completion | None = None
    error: Exception | None = None
    cancelled: bool = False

    @property
    def finished(self) -> bool:
        return self.completion is not None or self.error is not None


# ---- the host side ------------------------------------------------------------------------------

class Scheduler:
    """Requests in, completions out, one decode step at a time (`step`), over one engine's prompts.
    Not thread-safe: one thread submits, cancels and steps (the server's worker)."""

    def __init__(self, engine: Engine, max_batch: int | None = None):
        self.engine = engine
        self.max_batch = max_batch or engine.max_batch  # rows running at most (slots: its power of two)
        self.waiting: deque[Ticket] = deque()
        self.running: dict[int, Ticket] = {}  # slot -> ticket
        self.slots: Slots | None = None
        self.base_heads = 0  # head positions (P) a fresh state starts with: `warm_up` sets the served prompts'
        self._decoding = None  # (model, params) in decoding form, made once (`decoding_form`)
        self._admitting: list[Ticket] = []  # taken from `waiting`, not yet in a slot

    # ---- requests ----------------------------------------------------------------------------

    def submit(self, request: Request, served: Served | None = None) -> Ticket:
        ticket = Ticket(request, served)
        self.waiting.append(ticket)
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """The ticket leaves at the next step boundary; its slot is free for the next request."""
        ticket.cancelled = True

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def load(self) -> int:
        """Rows running or waiting."""
        return len(self.running) + len(self.waiting)

    def run(self, requests: list[Request], served: list[Served] | None = None) -> list[Completion]:
        """Completions of `requests`, in order, stepping until all are done (the first error is raised)."""
        tickets = [self.submit(r, s) for r, s in zip(requests, served or [None] * len(requests))]
        while not all(t.finished for t in tickets):
            self.step()
        for t in tickets:
            if t.error is not None:
                raise t.error
        return [t.completion for t in tickets]

    # ---- one iteration -------------------------------------------------------------------------

    def step(self) -> list[Ticket]:
        """Frees the slots of cancelled rows, admits waiting rows into free slots, runs one decode
        step; returns the tickets that finished."""
        for b in [b for b, t in self.running.items() if t.cancelled]:
            del self.running[b]
        self.waiting = deque(t for t in self.waiting if not t.cancelled)
        finished = self._apart()
        self._admitting = []
        try:
            finished += self._admit()
            if self.running:
                finished += self._decode()
        except Exception as e:  # the device state is lost: fail what it held, start afresh
            for t in {id(t): t for t in [*self.running.values(), *self._admitting]}.values():
                t.error = e
                finished.append(t)
            self.running, self.slots = {}, None
        self._shrink()
        return finished

    def _apart(self) -> list[Ticket]:
        """Adaption-prompt rows: their own static batches (`Engine.complete`)."""
        apart = [t for t in self.waiting if self._served(t) is not None and self._served(t).apart]
        if not apart:
            return []
        self.waiting = deque(t for t in self.waiting if t not in apart)
        try:
            for t, c in zip(apart, self.engine.complete([t.request for t in apart], served=[self._served(t) for t in apart])):
                t.completion = c
        except Exception:  # one bad row must not fail the others
            for t in apart:
                try:
                    t.completion = self.engine.complete([t.request], served=[self._served(t)])[0]
                except Exception as e:
                    t.error = e
        return apart

    def _served(self, t: Ticket) -> Served | None:
        return t.served or self.engine.prompts.get(t.request.prompt)

    def _admit(self) -> list[Ticket]:
        """Waiting rows prefilled into free slots (grown if they need more slots, cache or head)."""
        finished, taken = [], []
        while self.waiting and len(self.running) + len(taken) < self.max_batch:
            t = self.waiting.popleft()
            try:
                t.row = self.engine.row(t.request, t.served)
            except Exception as e:  # RequestError, TemplateError: this request's own
                t.error = e
                finished.append(t)
                continue
            taken.append(t)
        if not taken:
            return finished
        self._admitting = taken
        model, params = self._params()
        B, S, P = self._shape()
        P = max([P] + [pow2(t.row.head.length) for t in taken if t.row.head is not None])
        groups: dict[int, list[Ticket]] = {}  # by virtual-token bucket: each prefill one compiled shape
        for t in taken:
            groups.setdefault(_virtual_bucket(t.row), []).append(t)
        batches = [(g, self.engine.batch([t.row for t in g], heads=P or None)) for g in groups.values()]
        S = max([S] + [_cache_slots(batch, [t.row for t in g]) for g, batch in batches])
        self._reshape(max(B, pow2(len(self.running) + len(taken))), S, P)
        B = self._shape()[0]
        free = iter(b for b in range(B) if b not in self.running)
        for group, batch in batches:
            where = [next(free) for _ in group]
            n = batch["tokens"].shape[0]
            fresh = _prefill(model, params, batch, S)
            self.slots = _place(self.slots, fresh, batch["prefix"], batch["sampling"],
                                np.asarray(where + [B] * (n - len(where)), np.int32))
            self.running.update(zip(where, group))
        return finished

    def _decode(self) -> list[Ticket]:
        model, params = self._params()
        tokens, done, self.slots = _step(model, params, self.slots, self.engine.tokenizer.eos_token_id, self._pad())
        tokens, done = to_host(tokens), to_host(done)
        ended = []
        for b, t in list(self.running.items()):
            t.tokens.append(int(tokens[b]))
            if done[b]:
                del self.running[b]
                ended.append(t)
        if ended:
            completions = self.engine.finish([t.row for t in ended], [t.tokens for t in ended])
            for t, c in zip(ended, completions):
                t.completion = c
        return ended

    # ---- shapes --------------------------------------------------------------------------------

    def _shape(self) -> tuple[int, int, int]:
        if self.slots is None:
            return 0, BASE_SLOTS, self.base_heads
        B, S = self.slots.rows.cache.mask.shape
        return B, S, 0 if self.slots.prefix is None else self.slots.prefix.length

    def _reshape(self, B: int, S: int, P: int) -> None:
        """The slots in shape (B, S, P). B moves by factors of two, one `_resize` each, so that
        every resize a stream of short requests can take is one `warm_up` compiled (B to 2B and
        back): a jump from 1 to 4 slots, or 16 down to 2, would otherwise compile mid-serving."""
        if self.slots is None:
            self.slots = _empty(self._params()[0], self._params()[1], B, S, P)
            return
        b, s, p = self._shape()
        if (S, P) != (s, p):
            self.slots = _resize(self.slots, b, S, P)
        while b != B:
            b = 2 * b if b < B else b // 2
            self.slots = _resize(self.slots, b, S, P)

    def _shrink(self) -> None:
        """Idle: the state is dropped (the next request starts from the base shape); otherwise the
        slots are halved while their upper half is free and nothing waits."""
        if not self.running and not self.waiting:
            self.slots = None
            return
        B, S, P = self._shape()
        while not self.waiting and B > 1 and all(b < B // 2 for b in self.running):
            B //= 2
        self._reshape(B, S, P)

    def _params(self):
        if self._decoding is None:
            model, params, _ = decoding_form(self.engine.model, self.engine.frozen)
            self._decoding = (model, params)
        return self._decoding

    def _pad(self) -> int:
        """What a finished row reads: as `Engine.complete`'s `generate` (EOS; no pad token given)."""
        return filler(self.engine.tokenizer.eos_token_id)

    # ---- warm-up -------------------------------------------------------------------------------

    def warm_up(self) -> int:
        """Compiles every program a stream of short requests (inputs up to `MIN_INPUT_TOKENS` after
        the head, up to `MIN_NEW_TOKENS` new tokens) can run on the served prompts: for every slot
        count B, the decode step, the resizes to 2B and back, and for every prompt shape (virtual
        tokens) the prefill of n = 1, 2, 4 .. B rows and their placing. Returns how many."""
        before = compiled_programs()
        rows = {}
        for served in list(self.engine.prompts.values()):
            if served.apart:
                continue
            try:
                row = self.engine.row(served.warm_up_request(), served)
            except (ValueError, KeyError):  # no short input fits this template: compiled on first use
                continue
            rows.setdefault(_virtual_bucket(row), row)
            if row.head is not None:
                self.base_heads = max(self.base_heads, pow2(row.head.length))
        model, params = self._params()
        B = 1
        while B <= pow2(self.max_batch):
            self.slots = None
            self._reshape(B, BASE_SLOTS, self.base_heads)
            n = 1
            while n <= B:
                for row in rows.values():
                    batch = self.engine.batch([row] * n, heads=self.base_heads or None)
                    fresh = _prefill(model, params, batch, BASE_SLOTS)
                    self.slots = _place(self.slots, fresh, batch["prefix"], batch["sampling"], np.arange(n, dtype=np.int32))
                n *= 2
            _, _, self.slots = _step(model, params, self.slots, self.engine.tokenizer.eos_token_id, self._pad())
            if 2 * B <= pow2(self.max_batch):
                self.slots = _resize(_resize(self.slots, 2 * B, BASE_SLOTS, self.base_heads), B, BASE_SLOTS,
                                     self.base_heads)
            B *= 2
        self.slots = None
        return compiled_programs() - before


def _virtual_bucket(row: Row) -> int:
    """The virtual-token width a prefill of this row is compiled for (0: none)."""
    return pow2(row.virtual_width) if row.virtual_width else 0


def _cache_slots(batch: dict, rows: list[Row]) -> int:
    """Cache slots the rows need: their input bucket and a new-token bucket (as `Engine.complete`)."""
    return batch["tokens"].shape[1] + max(MIN_NEW_TOKENS, pow2(max(r.sampling.max_tokens for r in rows)))
