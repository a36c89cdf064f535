"""Rows -> one device batch: inputs left-padded, heads right-padded and masked, virtual tokens per
row, sampling per row, all in bucketed shapes (`collate`); and the static-batch decode program
(`decode_batch`) `Engine.complete` runs on it.

Axes: B rows (a power of two), T input positions, P head positions, N virtual tokens, L layers,
G key/value heads, K head width, E embedding width.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.data.batches import LENGTH_BUCKETS, bucket
from jaxprompt.inference.decode import generate
from jaxprompt.inference.requests import MIN_INPUT_TOKENS
from jaxprompt.inference.sampling import RowSampling
from jaxprompt.inference.served import Row
from jaxprompt.models import Prefix
from jaxprompt.precision import policy_of
from jaxprompt.prompts.forward import prompt_inputs
from jaxprompt.prompts.insert import insert_batch


def collate(rows: list[Row], model, frozen, pad_id: int, heads: int | None = None) -> dict:
    """Left-padded inputs, right-padded heads and per-row settings, in bucketed shapes. `heads`:
    the head positions P (default: the longest head's power of two; given, even if no row has one)."""
    B = pow2(len(rows))
    T = bucket(max(MIN_INPUT_TOKENS, *(len(r.tokens) for r in rows)), LENGTH_BUCKETS)
    tokens = np.full((B, T), pad_id, np.int32)
    mask = np.zeros((B, T), bool)
    slots = np.full((B, T), -1, np.int32)
    for b, r in enumerate(rows):
        n = len(r.tokens)
        tokens[b, T - n:], mask[b, T - n:], slots[b, T - n:] = r.tokens, True, r.slots
    batch = {"tokens": tokens, "mask": mask, "slots": slots, "start": np.zeros(B, np.int32),
             "prefix": None, "virtual": None, "adapter": None}
    if any(r.head is not None for r in rows) or heads:
        batch["prefix"] = _heads(rows, model.config, heads, batch["start"])
    if (slots >= 0).any():  # virtual tokens after the head (a prompt placed after an input field)
        E = model.embedding_table(frozen).shape[-1]
        virtual = np.zeros((B, pow2(int(slots.max()) + 1), E), np.float32)
        for b, r in enumerate(rows):
            if r.virtual_width:
                vt = to_host(r.served.method.virtual_tokens(r.served.prompt, model, frozen, 0))
                virtual[b, :len(vt)] = vt
        batch["virtual"] = virtual
    if rows[0].served.apart:  # rows of one adaption prompt: its adapter for the whole batch
        served = rows[0].served
        batch["adapter"] = prompt_inputs(model, frozen, served.method, served.prompt,
                                         {"tokens": jnp.asarray(tokens[:1, :1]),
                                          "task_id": jnp.zeros((1,), jnp.int32)}).adapter
    batch["sampling"] = RowSampling.of([r.sampling for r in rows], [r.key for r in rows], B)
    return batch


def _heads(rows: list[Row], c, P: int | None, start: np.ndarray) -> Prefix:
    """Every row's head [L, B, P, G, K], right-padded and masked; `start` gets each row's head length."""
    heads = [r.head for r in rows]
    B = start.shape[0]
    P = P or pow2(max(h.length for h in heads if h is not None))
    like = next((h.k for h in heads if h is not None), None)
    dtype = np.float32 if like is None else like.dtype
    k = np.zeros((c.n_layers, B, P, c.n_kv_heads, c.head_dim), dtype)
    v = np.zeros_like(k)
    m = np.zeros((c.n_layers, B, P), bool)
    on_host = {}  # rows of one prompt share its head: copied to this host once
    for b, h in enumerate(heads):
        if h is not None:
            if id(h) not in on_host:
                on_host[id(h)] = [to_host(x)[:, 0] for x in (h.k, h.v, h.mask)]
            k[:, b, :h.length], v[:, b, :h.length], m[:, b, :h.length] = on_host[id(h)]
            start[b] = h.length
    return Prefix(k, v, m)


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
def decode_batch(model, frozen, batch, max_new_tokens, eos_token_id):
    """New tokens [B, max_new_tokens] and each row's length, every row stopping at its own max_tokens."""
    return generate(model, frozen, input_embeds(model, frozen, batch), batch["mask"], max_new_tokens=max_new_tokens,
                    eos_token_id=eos_token_id, prefix=batch["prefix"], adapter=batch["adapter"],
                    start=batch["start"], sampling=batch["sampling"])
