"""Continuous (iteration-level) batching for `jaxprompt serve` (Orca, Yu et al. 2022).

B decode slots, each row at its own key/value cache index and its own step: a decode step advances
every running row by one token; a row that ends (EOS, its `max_tokens`, the position table, its
client gone) frees its slot at the next step boundary, and a waiting request is prefilled into that
slot (its prompt's head from the prompt cache, as `Engine.complete` does) while the other rows keep
decoding. A batch no longer runs until its longest row ends, and a request arriving mid-flight no
longer waits for a whole batch.

The device programs are `models.generate`'s own steps (`prefill`, `emit`, `read`, `sample_rows`):
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
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxprompt.inference import (MIN_INPUT_TOKENS, MIN_NEW_TOKENS, Completion, Engine, Request, Row, Served,
                                 input_embeds, pow2, to_host)
from jaxprompt.models import Prefix
from jaxprompt.models.generate import Decoding, RowSampling, decoding_form, emit, filler, prefill, read, sample_rows
from jaxprompt.precision import policy_of

BASE_SLOTS = MIN_INPUT_TOKENS + MIN_NEW_TOKENS  # cache slots of a short request: input bucket + new tokens


@struct.dataclass
class Slots:
    """The device state of B decode slots: free slots are rows that are `done`."""

    rows: Decoding  # [B]: logits, positions, steps, cache with a per-row index
    prefix: Prefix | None  # [L, B, P, G, K] float32: each slot's head, right-padded and masked
    sampling: RowSampling  # [B]: each slot's key, settings and max_tokens


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


# ---- device programs ----------------------------------------------------------------------------

def _fit(x: jax.Array, axis: int, n: int, fill=0) -> jax.Array:
    """`x` cut or padded (with `fill`) to n along `axis`."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_fit(jax.random.key_data(x), axis, n), impl=jax.random.key_impl(x))
    m = x.shape[axis]
    if n <= m:
        return jax.lax.slice_in_dim(x, 0, n, axis=axis)
    shape = list(x.shape)
    shape[axis] = n - m
    return jnp.concatenate([x, jnp.full(shape, fill, x.dtype)], axis)


def _cache_axis(cache_k) -> int:
    return 0 if isinstance(cache_k, tuple) else 1  # per-layer [B, S, G, K] buffers, or stacked [L, B, S, G, K]


@partial(jax.jit, static_argnames=("B", "S", "P"))
def _resize(slots: Slots, B: int, S: int, P: int) -> Slots:
    """The same slots in shape (B, S, P): rows, cache slots and head positions cut or padded (new
    slots free, new positions masked). Rows keep their slot, so running rows decode on unchanged."""
    rows, cache = slots.rows, slots.rows.cache
    a = _cache_axis(cache.k)
    kv = lambda x: _fit(_fit(x, a + 1, S), a, B)
    cache = cache.replace(k=jax.tree.map(kv, cache.k), v=jax.tree.map(kv, cache.v),
                          mask=_fit(_fit(cache.mask, 1, S, False), 0, B), positions=_fit(_fit(cache.positions, 1, S), 0, B),
                          index=_fit(cache.index, 0, B))
    rows = Decoding(_fit(rows.logits, 0, B), _fit(rows.next_pos, 0, B), _fit(rows.length, 0, B),
                    _fit(rows.done, 0, B, True), cache)
    prefix = None
    if P:
        p = slots.prefix
        if p is None:  # the first head: every slot's head empty (masked)
            c = jax.tree.leaves(cache.k)
            L, (G, K) = (len(c) if a == 0 else c[0].shape[0]), c[0].shape[-2:]
            p = Prefix(jnp.zeros((L, B, P, G, K), jnp.float32), jnp.zeros((L, B, P, G, K), jnp.float32),
                       jnp.zeros((L, B, P), bool))
        prefix = Prefix(_fit(_fit(p.k, 2, P), 1, B), _fit(_fit(p.v, 2, P), 1, B), _fit(_fit(p.mask, 2, P, False), 1, B))
    return Slots(rows, prefix, jax.tree.map(lambda x: _fit(x, 0, B), slots.sampling))


def empty_slots(model, params: dict, B: int, S: int, P: int) -> Slots:
    """B free slots of S cache slots (per-row index) and P head positions."""
    c = model.config
    per_layer = isinstance(params[model.arch.stack_key], tuple)
    dtype = policy_of(params).compute_dtype
    cache = model.init_cache(B, S, dtype, per_layer=per_layer, per_row=True)
    rows = Decoding(jnp.zeros((B, c.vocab_size), jnp.float32), jnp.zeros(B, jnp.int32), jnp.zeros(B, jnp.int32),
                    jnp.ones(B, bool), cache)
    prefix = None
    if P:
        shape = (c.n_layers, B, P, c.n_kv_heads, c.head_dim)
        prefix = Prefix(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32), jnp.zeros(shape[:3], bool))
    sampling = RowSampling(keys=jax.random.split(jax.random.key(0), B), temperature=jnp.zeros(B),
                           top_k=jnp.zeros(B, jnp.int32), top_p=jnp.ones(B), max_tokens=jnp.zeros(B, jnp.int32))
    return Slots(rows, prefix, sampling)


_empty = jax.jit(empty_slots, static_argnames=("model", "B", "S", "P"))


@partial(jax.jit, static_argnames=("model", "S"))
def _prefill(model, params: dict, batch: dict, S: int) -> Decoding:
    """n new rows read into a fresh cache of S slots, each row's index after its input."""
    n = batch["tokens"].shape[0]
    per_layer = isinstance(params[model.arch.stack_key], tuple)
    cache = model.init_cache(n, S, policy_of(params).compute_dtype, per_layer=per_layer)
    rows = prefill(model, params, input_embeds(model, params, batch), batch["mask"], cache, batch["start"],
                   batch["prefix"], None)
    return rows.replace(cache=rows.cache.replace(index=jnp.full(n, rows.cache.index)))


@partial(jax.jit, donate_argnames=("slots",))
def _place(slots: Slots, fresh: Decoding, prefix: Prefix | None, sampling: RowSampling, where: jax.Array) -> Slots:
    """Rows `fresh` written into slots `where` [n] (an index B or past it: a padding row, dropped)."""
    def put(old, new, axis=0):
        return old.at[(slice(None),) * axis + (where,)].set(new.astype(old.dtype), mode="drop")

    rows, cache, new = slots.rows, slots.rows.cache, fresh.cache
    a = _cache_axis(cache.k)
    cache = cache.replace(k=jax.tree.map(lambda o, x: put(o, x, a), cache.k, new.k),
                          v=jax.tree.map(lambda o, x: put(o, x, a), cache.v, new.v),
                          mask=put(cache.mask, new.mask), positions=put(cache.positions, new.positions),
                          index=put(cache.index, new.index))
    rows = Decoding(put(rows.logits, fresh.logits), put(rows.next_pos, fresh.next_pos), put(rows.length, fresh.length),
                    put(rows.done, fresh.done), cache)
    heads = slots.prefix
    if heads is not None:
        heads = Prefix(put(heads.k, prefix.k, 1), put(heads.v, prefix.v, 1), put(heads.mask, prefix.mask, 1))
    old = slots.sampling
    sampling = RowSampling(old.keys.at[where].set(sampling.keys, mode="drop"),
                           put(old.temperature, sampling.temperature), put(old.top_k, sampling.top_k),
                           put(old.top_p, sampling.top_p), put(old.max_tokens, sampling.max_tokens))
    return Slots(rows, heads, sampling)


@partial(jax.jit, static_argnames=("model", "eos_token_id", "pad"), donate_argnames=("slots",))
def _step(model, params: dict, slots: Slots, eos_token_id: int | None, pad: int):
    """One iteration: every running slot emits a token and reads it. Returns (tokens [B], done [B], slots)."""
    rows = slots.rows
    drawn = sample_rows(rows.logits, rows.length, slots.sampling)
    token, rows = emit(rows, drawn, max_positions=model.config.max_positions, eos_token_id=eos_token_id, pad=pad,
                       max_tokens=slots.sampling.max_tokens)
    return token, rows.done, slots.replace(rows=read(model, params, rows, token, slots.prefix, None))


PROGRAMS = (_empty, _resize, _prefill, _place, _step)


def compiled_programs() -> int:
    """How many programs the scheduler has compiled (all shapes)."""
    return sum(f._cache_size() for f in PROGRAMS)


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
        apart = [t for t in self.waiting if self._served(t) is not None and self._served(t).kind == "adaption"]
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
                t.row = self.engine._row(t.request, t.served)
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
        batches = [(g, self.engine._collate([t.row for t in g], heads=P or None)) for g in groups.values()]
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
            completions = self.engine._completions([t.row for t in ended], [t.tokens for t in ended])
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
            if served.kind == "adaption":
                continue
            try:
                row = self.engine._row(self.engine._warm_up_request(served), served)
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
                    batch = self.engine._collate([row] * n, heads=self.base_heads or None)
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
    return pow2(max(row.slots) + 1) if max(row.slots, default=-1) >= 0 else 0


def _cache_slots(batch: dict, rows: list[Row]) -> int:
    """Cache slots the rows need: their input bucket and a new-token bucket (as `Engine.complete`)."""
    return batch["tokens"].shape[1] + max(MIN_NEW_TOKENS, pow2(max(r.options.max_tokens for r in rows)))
