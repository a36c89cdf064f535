"""One inference path: requests (a served prompt's name, an input, sampling options) -> completions.

`jaxprompt generate`, evaluation's generation and lm-eval's generate_until call `Engine.complete`
(static batches: `decode.generate`); `jaxprompt serve` steps the engine's rows through
`scheduler.Scheduler` (continuous batching), made of the same prefill and decode steps.

Requests for different prompts decode together in one compiled batch (Lester et al. 2021,
"mixed-task inference"): each row attends to its own prompt's head, the keys/values of every
position before the input (prefix-tuning keys/values, virtual tokens, the template's fixed text),
computed once per prompt and kept by the session's prompt cache. Heads of different lengths are
right-padded and masked; each row's positions start after its own head. Virtual tokens placed after
the input's first field are inserted per row. LLaMA-Adapter prompts read every layer through a
gate, not through keys/values: rows of one adaption prompt decode together, apart from others.

Compiled shapes are bucketed (batch and head length to powers of two, input length to the data
buckets of at least `MIN_INPUT_TOKENS`, new tokens to a power of two of at least
`MIN_NEW_TOKENS`; each row stops at its own `max_tokens` inside the decode loop), so a new mix of
prompts and lengths reuses a compiled step; `Engine.warm_up` compiles the batch sizes before a
server takes requests. A row's tokens depend only on its prompt, input and options (greedy; or its
own seed, `RowSampling`), never on what shares its batch.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int, UInt32

from jaxprompt.data.batches import LENGTH_BUCKETS, bucket
from jaxprompt.data.templates import Encoded
from jaxprompt.inference.decode import generate
from jaxprompt.inference.requests import (
    MIN_INPUT_TOKENS,
    MIN_NEW_TOKENS,
    TOP_LOGPROBS,
    Completion,
    Options,
    Request,
    RequestError,
    parse_input,
    prompt_comes_first,
)
from jaxprompt.inference.sampling import RowSampling, SamplingError
from jaxprompt.models import Prefix, positions_from_mask
from jaxprompt.precision import policy_of
from jaxprompt.prompts.forward import prompt_inputs, token_logprobs
from jaxprompt.prompts.insert import insert_batch
from jaxprompt.session import Session


@dataclasses.dataclass
class Served:
    """A prompt the engine serves: its session (template, method), its inference form, and the
    keys/values it attends to before any input (computed once)."""

    name: str
    session: Session | None  # None: the bare model, raw text only
    method: object = None  # the inference form (None: the plain text, a written prompt or none)
    prompt: dict | None = None
    hard_prompt: str | None = None  # a written prompt in place of {prompt}
    probes: tuple[Encoded, Encoded] | None = None  # the template under two different inputs
    own_prefix: Prefix | None = None  # the method's keys/values alone (prefix tuning)

    @property
    def takes_positions(self) -> bool:
        """Whether the prompt occupies input positions (virtual tokens)."""
        return self.method is not None and self.method.takes_positions

    @property
    def makes_prefix(self) -> bool:
        return self.method is not None and self.method.makes_prefix

    @property
    def adapts_layers(self) -> bool:
        """Whether the prompt changes every layer (LLaMA-Adapter): its rows decode apart from others'."""
        return self.method is not None and self.method.adapts_layers

    @property
    def leading_virtual(self) -> int | None:
        """Virtual tokens a raw text gets before it: none for prompts that take no positions (prefix,
        adaption, written, bare); the prompt's length for one learned first in its template
        (`{prompt} ...`, placed as PEFT places a prompt); None for one learned inside its template,
        which raw text cannot take (what would surround it is not defined)."""
        if not self.takes_positions:
            return 0
        first = prompt_comes_first(self.session.task, self.method.length)
        return self.method.length if first and self.method.n_tasks == 1 else None


@dataclasses.dataclass
class Row:
    """One request ready to decode: its prompt, its input after the cached head, and the head."""

    served: Served
    tokens: list[int]  # the part after the head, left-padded into the batch
    slots: list[int]
    head: Prefix | None  # [L, 1, P, G, K]
    prompt_tokens: int
    options: Options
    key: int


class Engine:
    """One frozen model serving named prompts. `complete` takes requests for any mix of them."""

    def __init__(self, model, frozen, tokenizer, model_id: str, prompt_cache, max_batch: int = 32,
                 fingerprint_session: Session | None = None):
        self.model, self.frozen, self.tokenizer, self.model_id = model, frozen, tokenizer, model_id
        self.prompt_cache = prompt_cache
        self.max_batch = max_batch
        self.prompts: dict[str, Served] = {}
        self.share_heads = True  # False: every position computed per row (no prompt cache)
        self._base = fingerprint_session  # a session over these weights: keys the prompt cache

    @classmethod
    def of_session(cls, session: Session, max_batch: int = 32) -> "Engine":
        return cls(session.model, session.frozen, session.tokenizer, session.model_id, session.prompt_cache,
                   max_batch, session)

    @property
    def config(self):
        return self.model.config

    # ---- prompts ---------------------------------------------------------------------------------

    def add(self, name: str, session: Session | None, prompt=None, hard_prompt: str | None = None) -> Served:
        """Serves `prompt` (a trained pytree; None with `hard_prompt` or for the plain template) under
        `name`. `session` must hold this engine's frozen weights."""
        served = Served(name, session)
        if session is not None:
            if session.frozen is not self.frozen:
                raise RequestError(f"prompt {name!r} was loaded for other weights than this engine's")
            if session.method.n_tasks > 1 and hard_prompt is None:
                raise RequestError(f"prompt {name!r} is a multi-task prompt: serve one task of it (task_session)")
            if hard_prompt is None and prompt is not None:
                served.method, served.prompt = session.method.inference_prompt(prompt, self.model, self.frozen)
            served.hard_prompt = hard_prompt
            fields = session.task.template.fields
            served.probes = tuple(self._encode(served, {f: mark for f in fields}, 0) for mark in ("\x00", "\x01"))
            if served.makes_prefix:
                served.own_prefix = prompt_inputs(self.model, self.frozen, served.method, served.prompt,
                                                  {"tokens": jnp.zeros((1, 1), jnp.int32),
                                                   "task_id": jnp.zeros((1,), jnp.int32)}).prefix
        self.prompts[name] = served
        return served

    def remove(self, name: str) -> None:
        self.prompts.pop(name)

    # ---- requests -> rows ------------------------------------------------------------------------

    def _encode(self, served: Served, row: dict, new_tokens: int) -> Encoded:
        return served.session.encode([row], hard_prompt=served.hard_prompt, with_target=False,
                                     new_tokens=new_tokens)[0]

    def check(self, request: Request, served: Served | None = None) -> None:
        """Raises what `complete` would for this request's input (RequestError, TemplateError),
        without computing anything on the model."""
        self._tokens(request, served or self._served(request))

    def _served(self, request: Request) -> Served:
        served = self.prompts.get(request.prompt)
        if served is None:
            raise RequestError(f"unknown prompt {request.prompt!r}; served: {', '.join(sorted(self.prompts))}")
        return served

    def _tokens(self, request: Request, served: Served) -> tuple[list[int], list[int], int]:
        """(tokens, slots, length of the head the prompt cache holds) of a request's input."""
        V = self.config.vocab_size
        if request.options.top_k > V:
            raise SamplingError(f"top-k {request.options.top_k} is more than the model's vocabulary of {V} tokens; "
                                f"use 0 (no top-k filter) to {V}")
        given = request.ids if request.ids is not None else (request.text.strip() if request.row is None else request.row)
        if not given:
            raise RequestError("the prompt text is empty")
        n_new = request.options.max_tokens
        if request.raw or served.session is None:
            n = served.leading_virtual if served.session is not None else 0
            if n is None:
                raise RequestError(f"prompt {served.name!r} was learned inside its template: raw text applies to "
                                   "prompts learned first in theirs ('{prompt} ...'), prefix and adaption prompts")
            if request.ids is not None:
                text = list(request.ids)
            else:
                text = self.tokenizer.encode(request.text)
                if self.tokenizer.add_bos:
                    text = [self.tokenizer.bos_token_id] + text
            if not text:
                raise RequestError("the prompt text is empty")
            tokens, slots = [self.tokenizer.pad_token_id] * n + text, list(range(n)) + [-1] * len(text)
            prefix = 0 if served.own_prefix is None else served.own_prefix.length
            if prefix + len(tokens) + n_new > self.config.max_positions:
                raise RequestError(f"input of {len(tokens)} tokens + {prefix} prefix positions + {n_new} new tokens "
                                   f"needs {len(tokens) + prefix + n_new} positions; the model has "
                                   f"{self.config.max_positions}")
            return tokens, slots, n if self.share_heads else 0  # the prompt's virtual tokens: the head
        row = request.row if request.row is not None else parse_input(served.session.task, request.text)
        encoded = self._encode(served, row, n_new)  # TemplateError: the input does not fit
        # the head: what the template puts before the input's first token, never the last position
        # (whose logits start the completion)
        h = min(_common(encoded, served.probes[0]), _common(served.probes[0], served.probes[1]), len(encoded) - 1)
        return encoded.tokens, encoded.slots, h if self.share_heads else 0

    def _row(self, request: Request, served: Served | None = None) -> Row:
        served = served or self._served(request)
        tokens, slots, h = self._tokens(request, served)
        if h > 0:
            base = self._base or served.session
            head = self.prompt_cache.head(_with_weights_id(served.session, base), served.method, served.prompt,
                                          tokens[:h], slots[:h])
        else:
            head = served.own_prefix
        return Row(served, tokens[h:], slots[h:], head, len(tokens), request.options, request.key)

    def warm_up(self, max_batch: int | None = None, scheduler=None) -> int:
        """Compiles the decode programs before any request needs them. `complete`'s: for each served
        prompt's shape (kind, head length, virtual tokens), every power-of-two batch up to
        `max_batch`, for inputs of up to `MIN_INPUT_TOKENS` after the head and up to `MIN_NEW_TOKENS`
        new tokens. With a `scheduler` (the server's continuous batching): every program it can run
        on such requests (`Scheduler.warm_up`), and `complete`'s for adaption prompts only (their
        rows keep static batches). Longer inputs or completions, and mixes of differently shaped
        prompts in `complete`, compile on first use. Returns how many programs were compiled."""
        seen, before = set(), _decode_batch._cache_size()
        for served in list(self.prompts.values()):
            if scheduler is not None and not served.adapts_layers:
                continue
            try:
                request = self._warm_up_request(served)
                row = self._row(request, served)
            except (ValueError, KeyError):  # no short input fits this template: compiled on first use
                continue
            shape = (served.name if served.adapts_layers else None,  # rows of one adaption prompt apart
                     None if row.head is None else pow2(row.head.length), max(row.slots, default=-1) >= 0)
            if shape in seen:
                continue
            seen.add(shape)
            B = 1
            while B <= min(max_batch or self.max_batch, self.max_batch):
                self.complete([request] * B, served=[served] * B)
                B *= 2
        return _decode_batch._cache_size() - before + (0 if scheduler is None else scheduler.warm_up())

    @staticmethod
    def _warm_up_request(served: Served) -> Request:
        options = Options(max_tokens=1)
        if served.session is None or served.leading_virtual is not None:
            return Request(served.name, text="a", raw=True, options=options)
        task = served.session.task
        row = {f: ("" if f in task.template.target_fields else "a") for f in task.fields}
        return Request(served.name, row=row, options=options)

    # ---- decoding --------------------------------------------------------------------------------

    def complete(self, requests: list[Request], served: list[Served] | None = None) -> list[Completion]:
        """Completions of `requests`, in order. Rows are grouped into compiled batches of at most
        `max_batch` (rows of one adaption prompt apart from other prompts' rows). `served`: the
        prompt of each request, as admitted (a server may have unloaded its name since)."""
        rows = [self._row(r, s) for r, s in zip(requests, served or [None] * len(requests))]
        groups: dict[str | None, list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            groups[row.served.name if row.served.adapts_layers else None].append(i)
        out: list[Completion | None] = [None] * len(rows)
        for indices in groups.values():
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start:start + self.max_batch]
                for i, completion in zip(chunk, self._decode([rows[i] for i in chunk])):
                    out[i] = completion
        return out

    def _decode(self, rows: list[Row]) -> list[Completion]:
        batch = self._collate(rows)
        n_new = max(MIN_NEW_TOKENS, pow2(max(r.options.max_tokens for r in rows)))
        tokens, lengths = _decode_batch(self.model, self.frozen, batch, n_new, self.tokenizer.eos_token_id)
        tokens, lengths = to_host(tokens), to_host(lengths)
        return self._completions(rows, [list(tokens[b, :lengths[b]]) for b in range(len(rows))], batch)

    def _completions(self, rows: list[Row], ids: list[list[int]], batch: dict | None = None) -> list[Completion]:
        """Each row's generated ids (EOS included) cut into its completion, with log-probabilities
        where asked (`batch`: the rows' collated inputs, if at hand)."""
        completions = [self._finish(row, list(i)) for row, i in zip(rows, ids)]
        wanted = [b for b, r in enumerate(rows) if r.options.logprobs is not None]
        if wanted:
            scores = self._logprobs(rows, batch or self._collate(rows), completions)
            for b in wanted:
                completions[b].logprobs, completions[b].top_logprobs = scores[b]
        return completions

    def _collate(self, rows: list[Row], heads: int | None = None) -> dict:
        """Left-padded inputs, right-padded heads and per-row settings, in bucketed shapes. `heads`:
        the head positions P (default: the longest head's power of two; given, even if no row has one)."""
        B = pow2(len(rows))
        T = bucket(max(MIN_INPUT_TOKENS, *(len(r.tokens) for r in rows)), LENGTH_BUCKETS)
        tokens = np.full((B, T), self.tokenizer.pad_token_id, np.int32)
        mask = np.zeros((B, T), bool)
        slots = np.full((B, T), -1, np.int32)
        for b, r in enumerate(rows):
            n = len(r.tokens)
            tokens[b, T - n:], mask[b, T - n:], slots[b, T - n:] = r.tokens, True, r.slots
        heads, P = [r.head for r in rows], heads
        batch = {"tokens": tokens, "mask": mask, "slots": slots, "start": np.zeros(B, np.int32),
                 "prefix": None, "virtual": None, "adapter": None}
        if any(h is not None for h in heads) or P:
            P = P or pow2(max(h.length for h in heads if h is not None))
            like = next((h.k for h in heads if h is not None), None)
            c = self.config
            L, G, K = c.n_layers, c.n_kv_heads, c.head_dim
            dtype = np.float32 if like is None else like.dtype
            k = np.zeros((L, B, P, G, K), dtype)
            v = np.zeros((L, B, P, G, K), dtype)
            m = np.zeros((L, B, P), bool)
            on_host = {}  # rows of one prompt share its head: copied to this host once
            for b, h in enumerate(heads):
                if h is not None:
                    if id(h) not in on_host:
                        on_host[id(h)] = [to_host(x)[:, 0] for x in (h.k, h.v, h.mask)]
                    k[:, b, :h.length], v[:, b, :h.length], m[:, b, :h.length] = on_host[id(h)]
                    batch["start"][b] = h.length
            batch["prefix"] = Prefix(k, v, m)
        if (slots >= 0).any():  # virtual tokens after the head (a prompt placed after an input field)
            E = self.model.embedding_table(self.frozen).shape[-1]
            N = pow2(int(slots.max()) + 1)
            virtual = np.zeros((B, N, E), np.float32)
            for b, r in enumerate(rows):
                if max(r.slots) >= 0:
                    vt = to_host(r.served.method.virtual_tokens(r.served.prompt, self.model, self.frozen, 0))
                    virtual[b, :len(vt)] = vt
            batch["virtual"] = virtual
        if rows[0].served.adapts_layers:
            served = rows[0].served
            batch["adapter"] = prompt_inputs(self.model, self.frozen, served.method, served.prompt,
                                             {"tokens": jnp.asarray(tokens[:1, :1]),
                                              "task_id": jnp.zeros((1,), jnp.int32)}).adapter
        options = [r.options for r in rows] + [Options()] * (B - len(rows))
        folds = [r.key for r in rows] + [0] * (B - len(rows))
        # host arrays: each program that takes them moves them to the device with its other inputs
        batch["sampling"] = RowSampling(keys=_row_keys([o.seed for o in options], folds),
                                        temperature=np.asarray([o.temperature for o in options], np.float32),
                                        top_k=np.asarray([o.top_k for o in options], np.int32),
                                        top_p=np.asarray([o.top_p for o in options], np.float32),
                                        max_tokens=np.asarray([r.options.max_tokens for r in rows]
                                                              + [0] * (B - len(rows)), np.int32))
        return batch

    def _cut(self, options: Options, ids: list[int]) -> tuple[list[int], str, str, bool]:
        """The cuts a completion makes of a row's tokens: at EOS, at the request's `max_tokens`, and
        its text at the first stop string. (ids, text, finish reason, whether a stop string cut)."""
        eos = self.tokenizer.eos_token_id
        reason = "length"
        if eos is not None and eos in ids:
            ids, reason = ids[:ids.index(eos)], "stop"
        if len(ids) > options.max_tokens:
            ids, reason = ids[:options.max_tokens], "length"
        text = self.tokenizer.decode(ids)
        cuts = [text.index(s) for s in options.stop if s and s in text]
        if cuts:
            return ids, text[:min(cuts)], "stop", True
        return ids, text, reason, False

    def _finish(self, row: Row, ids: list[int]) -> Completion:
        """EOS, the request's own max_tokens and stop strings cut the row's tokens."""
        ids, text, reason, stopped = self._cut(row.options, ids)
        if stopped:
            n = 0  # the tokens whose text lies before the stop string
            while n < len(ids) and len(self.tokenizer.decode(ids[:n + 1])) <= len(text):
                n += 1
            ids = ids[:n]
        pieces = [self.tokenizer.decode(ids[:n + 1]) for n in range(len(ids))]
        token_texts = [b[len(a):] if b.startswith(a) else b for a, b in zip([""] + pieces, pieces)]
        return Completion(ids, text, reason, row.prompt_tokens, token_texts=token_texts)

    def streamable(self, options: Options, ids: list[int]) -> str:
        """The text of a row's first tokens that its completion will begin with, whatever comes
        next: `_cut`'s text, less a character still being spelled (bytes of it in later tokens)
        and any end that may be the start of a stop string."""
        _, text, _, stopped = self._cut(options, ids)
        if stopped:
            return text
        text = text.rstrip("\ufffd")
        held = max((k for s in options.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return text[:len(text) - held]

    def _logprobs(self, rows: list[Row], batch: dict, completions: list[Completion]):
        """Log-probabilities of each row's completion tokens (and the most likely alternatives), by
        one teacher-forced pass over input + completion."""
        B, T = batch["tokens"].shape
        N = pow2(max(max(len(c.tokens) for c in completions), 1))
        tokens = np.concatenate([batch["tokens"], np.full((B, N), self.tokenizer.pad_token_id, np.int32)], 1)
        mask = np.concatenate([batch["mask"], np.zeros((B, N), bool)], 1)
        slots = np.concatenate([batch["slots"], np.full((B, N), -1, np.int32)], 1)
        # shift each row right so input + completion ends at the last slot (left padding kept)
        for b, c in enumerate(completions):
            n = len(c.tokens)
            tokens[b] = np.roll(tokens[b], N - n)
            mask[b] = np.roll(mask[b], N - n)
            slots[b] = np.roll(slots[b], N - n)
            tokens[b, T + N - n:], mask[b, T + N - n:] = c.tokens, True
        chosen, top_values, top_ids = _score_batch(self.model, self.frozen, {**batch, "tokens": tokens, "mask": mask,
                                                                              "slots": slots}, N)
        chosen, top_values, top_ids = map(to_host, (chosen, top_values, top_ids))
        out = []
        for b, (row, c) in enumerate(zip(rows, completions)):
            n, k = len(c.tokens), row.options.logprobs or 0
            logprobs = [float(x) for x in chosen[b, N - n:]]
            top = [{self.tokenizer.decode([int(i)]): float(x) for i, x in zip(top_ids[b, j, :k], top_values[b, j, :k])}
                   for j in range(N - n, N)] if k else None
            out.append((logprobs, top))
        return out


def _with_weights_id(session: Session, base: Session) -> Session:
    """`session` keyed by `base`'s weights fingerprint (one hash of the weights, shared by every prompt)."""
    if session.weights_id is None:
        session.weights_id = base.fingerprint()
    return session


def _common(a: Encoded, b: Encoded) -> int:
    n = 0
    while n < min(len(a), len(b)) and a.tokens[n] == b.tokens[n] and a.slots[n] == b.slots[n]:
        n += 1
    return n


def _row_keys(seeds: list[int], folds: list[int]) -> jax.Array:
    """Row b's sampling key `fold_in(key(seeds[b]), folds[b])`, the batch's in one program (one
    dispatch per row cost milliseconds per admitted batch on a GPU host)."""
    if max(seeds) >= 2 ** 32:  # a seed past 32 bits: keyed as the scalar API keys it
        return jnp.stack([jax.random.fold_in(jax.random.key(s), f) for s, f in zip(seeds, folds)])
    return _fold_keys(np.asarray(seeds, np.uint32), np.asarray(folds, np.int32))


@jax.jit
def _fold_keys(seeds: UInt32[Array, "B"], folds: Int[Array, "B"]) -> jax.Array:
    return jax.vmap(lambda s, f: jax.random.fold_in(jax.random.key(s), f))(seeds, folds)


def to_host(x) -> np.ndarray:
    """A value on this host. One held across several processes' devices (weights sharded over
    processes) is gathered: every process decodes the same requests, so each makes this call."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): the buckets of batch, cache and head sizes."""
    return 1 << max(0, n - 1).bit_length()


def input_embeds(model, frozen, batch):
    """Embeddings with per-row virtual tokens in place, and each row's positions."""
    embeds = model.embed(frozen, batch["tokens"])
    if batch["virtual"] is not None:
        embeds = insert_batch(embeds, policy_of(frozen).cast_prompt_in(batch["virtual"]), batch["slots"])
    return embeds


@partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_token_id"))
def _decode_batch(model, frozen, batch, max_new_tokens, eos_token_id):
    return generate(model, frozen, input_embeds(model, frozen, batch), batch["mask"], max_new_tokens=max_new_tokens,
                    eos_token_id=eos_token_id, prefix=batch["prefix"], adapter=batch["adapter"],
                    start=batch["start"], row_sampling=batch["sampling"])


@partial(jax.jit, static_argnames=("model", "n_last"))
def _score_batch(model, frozen, batch, n_last):
    """Log-probabilities of the last `n_last` tokens of each row (and the top alternatives there)."""
    positions = positions_from_mask(batch["mask"], batch["start"])
    hidden, _ = model.transformer(frozen, input_embeds(model, frozen, batch), positions, batch["mask"],
                                  prefix=batch["prefix"], adapter=batch["adapter"])
    chosen, _, (top_values, top_ids) = token_logprobs(model, frozen, hidden[:, -n_last - 1:-1],
                                                      batch["tokens"][:, -n_last:], top=TOP_LOGPROBS)
    return chosen, top_values, top_ids
