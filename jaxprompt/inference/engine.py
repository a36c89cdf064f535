"""One inference path: requests (a served prompt's name, an input, its `Sampling`) -> completions.

`jaxprompt generate`, evaluation's generation and lm-eval's generate_until call `Engine.complete`
(static batches: `decode.generate`); `jaxprompt serve` steps the engine's rows through
`scheduler.Scheduler` (continuous batching), made of the same prefill and decode steps. Both use
the engine's public surface only: `row` (a request encoded after its prompt's cached head),
`batch` (rows -> one device batch), `finish` (a row's ids -> its completion) and `streamable`.

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
server takes requests. A row's tokens depend only on its prompt, input and sampling (greedy; or its
own seed, `RowSampling`), never on what shares its batch.
"""

from __future__ import annotations

from collections import defaultdict

import jax.numpy as jnp

from jaxprompt.data.templates import Encoded
from jaxprompt.inference import completions
from jaxprompt.inference.batch import collate, decode_batch, pow2, to_host
from jaxprompt.inference.requests import MIN_NEW_TOKENS, Completion, Request, RequestError, parse_input
from jaxprompt.inference.sampling import Sampling, check_vocabulary
from jaxprompt.inference.served import Row, Served
from jaxprompt.prompts.forward import prompt_inputs
from jaxprompt.session import Session


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

    def prepare(self, name: str, session: Session | None, prompt=None, hard_prompt: str | None = None) -> Served:
        """`prompt` (a trained pytree; None with `hard_prompt` or for the plain template) in the form
        the engine serves it under `name`, not yet served (`add` serves it). `session` must hold this
        engine's frozen weights."""
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
        return served

    def add(self, name: str, session: Session | None, prompt=None, hard_prompt: str | None = None) -> Served:
        """Serves `prompt` under `name` (see `prepare`)."""
        served = self.prepare(name, session, prompt, hard_prompt)
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
        self._tokens(request, served or self.served(request))

    def served(self, request: Request) -> Served:
        served = self.prompts.get(request.prompt)
        if served is None:
            raise RequestError(f"unknown prompt {request.prompt!r}; served: {', '.join(sorted(self.prompts))}")
        return served

    def _tokens(self, request: Request, served: Served) -> tuple[list[int], list[int], int]:
        """(tokens, slots, length of the head the prompt cache holds) of a request's input."""
        check_vocabulary(request.sampling, self.config.vocab_size)
        given = request.ids if request.ids is not None else (request.text.strip() if request.row is None else request.row)
        if not given:
            raise RequestError("the prompt text is empty")
        n_new = request.sampling.max_tokens
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

    def row(self, request: Request, served: Served | None = None) -> Row:
        """The request encoded after its prompt's head (from the prompt cache: computed on a miss).
        `served`: its prompt as admitted (a server may have unloaded the name since)."""
        served = served or self.served(request)
        tokens, slots, h = self._tokens(request, served)
        if h > 0:
            base = self._base or served.session
            head = self.prompt_cache.head(_with_weights_id(served.session, base), served.method, served.prompt,
                                          tokens[:h], slots[:h])
        else:
            head = served.own_prefix
        return Row(served, tokens[h:], slots[h:], head, len(tokens), request.sampling, request.key)

    def batch(self, rows: list[Row], heads: int | None = None) -> dict:
        """The rows as one batch in bucketed shapes (`batch.collate`); `heads`: its head positions."""
        return collate(rows, self.model, self.frozen, self.tokenizer.pad_token_id, heads)

    # ---- rows -> completions ---------------------------------------------------------------------

    def finish(self, rows: list[Row], ids: list[list[int]], batch: dict | None = None) -> list[Completion]:
        """Each row's generated ids (EOS included) cut into its completion, with log-probabilities
        where asked (`batch`: the rows' collated inputs, if at hand)."""
        out = [completions.finish(self.tokenizer, row, list(i)) for row, i in zip(rows, ids)]
        if any(r.sampling.logprobs is not None for r in rows):
            completions.with_logprobs(self.model, self.frozen, self.tokenizer, rows, batch or self.batch(rows), out)
        return out

    def streamable(self, sampling: Sampling, ids: list[int]) -> str:
        """The text of a row's first tokens its completion will begin with (`completions.streamable`)."""
        return completions.streamable(self.tokenizer, sampling, ids)

    # ---- static batches --------------------------------------------------------------------------

    def complete(self, requests: list[Request], served: list[Served] | None = None) -> list[Completion]:
        """Completions of `requests`, in order. Rows are grouped into compiled batches of at most
        `max_batch` (rows of one adaption prompt apart from other prompts' rows). `served`: the
        prompt of each request, as admitted (a server may have unloaded its name since)."""
        rows = [self.row(r, s) for r, s in zip(requests, served or [None] * len(requests))]
        groups: dict[str | None, list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            groups[row.served.name if row.served.apart else None].append(i)
        out: list[Completion | None] = [None] * len(rows)
        for indices in groups.values():
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start:start + self.max_batch]
                for i, completion in zip(chunk, self._decode([rows[i] for i in chunk])):
                    out[i] = completion
        return out

    def _decode(self, rows: list[Row]) -> list[Completion]:
        batch = self.batch(rows)
        n_new = max(MIN_NEW_TOKENS, pow2(max(r.sampling.max_tokens for r in rows)))
        tokens, lengths = decode_batch(self.model, self.frozen, batch, n_new, self.tokenizer.eos_token_id)
        tokens, lengths = to_host(tokens), to_host(lengths)
        return self.finish(rows, [list(tokens[b, :lengths[b]]) for b in range(len(rows))], batch)

    def warm_up(self, max_batch: int | None = None, scheduler=None) -> int:
        """Compiles the decode programs before any request needs them. `complete`'s: for each served
        prompt's shape (its method, head length, virtual tokens), every power-of-two batch up to
        `max_batch`, for inputs of up to `MIN_INPUT_TOKENS` after the head and up to `MIN_NEW_TOKENS`
        new tokens. With a `scheduler` (the server's continuous batching): every program it can run
        on such requests (`Scheduler.warm_up`), and `complete`'s for adaption prompts only (their
        rows keep static batches). Longer inputs or completions, and mixes of differently shaped
        prompts in `complete`, compile on first use. Returns how many programs were compiled."""
        seen, before = set(), decode_batch._cache_size()
        for served in list(self.prompts.values()):
            if scheduler is not None and not served.apart:
                continue
            try:
                request = served.warm_up_request()
                row = self.row(request, served)
            except (ValueError, KeyError):  # no short input fits this template: compiled on first use
                continue
            shape = (served.name if served.apart else None,  # rows of one adaption prompt apart
                     None if row.head is None else pow2(row.head.length), row.virtual_width > 0)
            if shape in seen:
                continue
            seen.add(shape)
            B = 1
            while B <= min(max_batch or self.max_batch, self.max_batch):
                self.complete([request] * B, served=[served] * B)
                B *= 2
        return decode_batch._cache_size() - before + (0 if scheduler is None else scheduler.warm_up())


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
