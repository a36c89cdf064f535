"""Decoding: EOS stops rows, sampling filters, the position limit, reproducible sampling."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import parity
import pytest
from conftest import program_values, tiny_config

from jaxprompt.inference.decode import generate, left_pad
from jaxprompt.inference.sampling import RowSampling, Sampling
from jaxprompt.models import Model, load_pretrained

torch = pytest.importorskip("torch")


def test_eos_stops_rows_and_pads(tiny_hf):
    _, directory = tiny_hf("gpt2")
    config, params = load_pretrained(directory)
    model = Model(config)
    ids, mask = left_pad([[5, 6, 7], [9, 10, 11, 12]], pad_id=0)
    free, _ = generate(model, params, model.embed(params, ids), mask, max_new_tokens=8)
    eos = int(free[0, 2])  # pretend row 0's third token is EOS
    out, lengths = generate(model, params, model.embed(params, ids), mask, max_new_tokens=8,
                            eos_token_id=eos, pad_token_id=99)
    out = np.asarray(out)
    first = [list(row).index(eos) if eos in row else None for row in np.asarray(free)]
    assert first[0] is not None and first[0] <= 2  # row 0 does stop early: the test means something
    for b in range(2):
        if first[b] is None:
            assert lengths[b] == 8
            np.testing.assert_array_equal(out[b], np.asarray(free)[b])
        else:
            n = first[b] + 1
            assert lengths[b] == n
            np.testing.assert_array_equal(out[b, :n], np.asarray(free)[b, :n])
            assert (out[b, n:] == 99).all()


def test_sampling_filters(tiny_hf):
    _, directory = tiny_hf("opt")
    config, params = load_pretrained(directory)
    model = Model(config)
    ids, mask = left_pad([[5, 6, 7], [9, 10, 11, 12]], pad_id=1)
    embeds = model.embed(params, ids)
    greedy, _ = generate(model, params, embeds, mask, max_new_tokens=6)
    top1, _ = generate(model, params, embeds, mask, max_new_tokens=6,
                       sampling=_rows(Sampling(temperature=1.0, top_k=1, seed=3), 2))
    tiny_p, _ = generate(model, params, embeds, mask, max_new_tokens=6,
                         sampling=_rows(Sampling(temperature=1.0, top_p=1e-6, seed=4), 2))
    np.testing.assert_array_equal(top1, greedy)
    np.testing.assert_array_equal(tiny_p, greedy)
    hot = lambda seed: _rows(Sampling(temperature=1.5, seed=seed), 2)
    a, _ = generate(model, params, embeds, mask, max_new_tokens=6, sampling=hot(1))
    b, _ = generate(model, params, embeds, mask, max_new_tokens=6, sampling=hot(1))
    c, _ = generate(model, params, embeds, mask, max_new_tokens=6, sampling=hot(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def _rows(sampling: Sampling, n: int) -> RowSampling:
    """Every one of n rows sampling as `sampling`, row b with key (seed, b)."""
    return RowSampling.of([sampling] * n, list(range(n)), n)


def _filtered_softmax(logits: np.ndarray, sampling: Sampling) -> np.ndarray:
    """The distribution a sampler must draw from, as transformers' warpers define it: logits / T,
    the k most likely tokens, the smallest set of most likely tokens whose mass reaches top_p."""
    z = logits.astype(np.float64) / sampling.temperature
    if sampling.top_k:
        z = np.where(z < np.sort(z)[-sampling.top_k], -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if sampling.top_p < 1.0:
        order = np.argsort(-p)
        before = np.cumsum(p[order]) - p[order]  # mass of the more likely tokens
        keep = np.zeros_like(p, bool)
        keep[order[before < sampling.top_p]] = True
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    return p


@pytest.mark.parametrize("sampling", [Sampling(temperature=1.5), Sampling(temperature=0.7, top_k=6),
                                      Sampling(temperature=1.0, top_p=0.5),
                                      Sampling(temperature=1.2, top_k=20, top_p=0.8)],
                         ids=lambda s: f"T{s.temperature}-k{s.top_k}-p{s.top_p}")
def test_sampled_frequencies_follow_the_filtered_softmax(tiny_hf, sampling):
    """N independent draws of the first token (one per batch row, each its own key) against the distribution computed
    here from transformers' logits: every token's count within 5 standard deviations of N p, and
    no token outside the kept set ever drawn."""
    hf, directory = tiny_hf("opt")
    config, params = load_pretrained(directory)
    model = Model(config)
    prompt = [5, 6, 7]
    with torch.no_grad():
        logits = hf(torch.tensor([prompt])).logits[0, -1].double().numpy()
    expected = _filtered_softmax(logits, sampling)
    assert 0.02 < expected.max() < 0.9 and (expected > 0).sum() > 2  # a spread worth testing
    N = 4000
    ids, mask = left_pad([prompt] * N, pad_id=1)
    tokens, _ = generate(model, params, model.embed(params, ids), mask, max_new_tokens=1,
                         sampling=_rows(dataclasses.replace(sampling, seed=11), N))
    counts = np.bincount(np.asarray(tokens)[:, 0], minlength=len(expected))[:len(expected)]
    assert counts.sum() == N
    assert counts[expected == 0].sum() == 0
    sd = np.sqrt(N * expected * (1 - expected))
    assert np.all(np.abs(counts - N * expected) <= 5 * sd + 1), np.abs(counts - N * expected).max()


@pytest.mark.parametrize("model_type", ["gpt2", "opt"])
def test_rows_stop_at_the_position_limit(model_type):
    """A 12-position model never reads a 13th position: a row of n tokens gets 12 - n + 1 new ones
    (the last predicted from position 11), each equal to greedy recomputation, then padding."""
    config = tiny_config(model_type, vocab_size=64, max_positions=12)
    model = Model(config)
    params = model.init(jax.random.key(0), std=0.3)
    seqs = [[5, 6, 7, 8, 9], [11, 12, 13]]
    ids, mask = left_pad(seqs, pad_id=0)
    out, lengths = generate(model, params, model.embed(params, ids), mask, max_new_tokens=20, pad_token_id=63)
    assert list(np.asarray(lengths)) == [8, 10]
    for b, seq in enumerate(seqs):  # reference: full forwards over positions that exist
        expected = parity.recomputed_greedy(model, params, [seq], int(lengths[b]))[0]
        np.testing.assert_array_equal(np.asarray(out[b, :lengths[b]]), expected)
        assert (np.asarray(out[b, lengths[b]:]) == 63).all()


def test_the_prefill_unembeds_only_the_last_position(tiny_lm):
    """No [B, T, V] logits anywhere in generation: the prefill's first token needs only the last row."""
    model, params = tiny_lm
    B, T, V = 2, 11, model.config.vocab_size
    embeds = model.embed(params, jnp.ones((B, T), jnp.int32))
    seen = {shape for shape, _ in program_values(
        lambda p, e: generate(model, p, e, jnp.ones((B, T), bool), max_new_tokens=3), params, embeds)}
    assert (B, T, V) not in seen and (B, 1, V) in seen


def test_each_row_stops_at_its_own_max_tokens(tiny_lm):
    """`RowSampling.max_tokens`: row b gets its first max_tokens[b] greedy tokens (those of a run without
    limits), then padding, and the loop ends when the longest row does."""
    model, params = tiny_lm
    ids, mask = left_pad([[5, 6, 7], [9, 10, 11, 12], [3, 4]], pad_id=0)
    embeds = model.embed(params, ids)
    free, _ = generate(model, params, embeds, mask, max_new_tokens=8)
    rows = RowSampling(keys=jax.random.split(jax.random.key(0), 3), temperature=jnp.zeros(3),
                       top_k=jnp.zeros(3, jnp.int32), top_p=jnp.ones(3), max_tokens=jnp.asarray([2, 5, 0]))
    out, lengths = generate(model, params, embeds, mask, max_new_tokens=8, pad_token_id=99, sampling=rows)
    out, free = np.asarray(out), np.asarray(free)
    assert list(np.asarray(lengths)) == [2, 5, 1]  # a row asking 0 tokens stops after the first
    for b, n in enumerate([2, 5, 1]):
        np.testing.assert_array_equal(out[b, :n], free[b, :n])
        assert (out[b, n:] == 99).all()


def test_bf16_decoding_on_cpu_converts_one_layer_at_a_time():
    """bf16 weights on a CPU decode through the stacked layers (`_scans_layers`): the same tokens as
    one buffer per layer, without the float32 copy of every layer that XLA hoists out of that loop
    (compiled temporaries: below the copy's size; the per-layer form's: above it)."""
    from jaxprompt.inference.decode import _scans_layers

    config = tiny_config("llama", vocab_size=64, d_model=256, n_heads=4, n_kv_heads=4, d_ff=1024, n_layers=8)
    model = Model(config)
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), model.init(jax.random.key(0), std=0.3))
    copy_bytes = 2 * sum(x.nbytes for x in jax.tree.leaves(params[model.arch.stack_key]))  # in float32
    ids, mask = left_pad([[5, 6, 7, 8], [9, 10]], pad_id=0)
    embeds = model.embed(params, ids)
    per_layer = model.decoding_params(params)
    assert _scans_layers(params, model) and not _scans_layers(per_layer, model)

    def run(p):
        f = jax.jit(lambda p, e: generate(model, p, e, mask, max_new_tokens=6))
        return f(p, embeds), f.lower(p, embeds).compile().memory_analysis().temp_size_in_bytes

    (stacked_out, stacked_len), stacked_temp = run(params)
    (layer_out, layer_len), layer_temp = run(per_layer)
    np.testing.assert_array_equal(np.asarray(stacked_out), np.asarray(layer_out))
    np.testing.assert_array_equal(np.asarray(stacked_len), np.asarray(layer_len))
    assert stacked_temp < copy_bytes <= layer_temp, (stacked_temp, copy_bytes, layer_temp)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_bf16_weights_held_as_bits_generate_what_the_bf16_weights_generate(family):
    """A CPU session holds bf16 layers and vocabulary tables as raw bits (`Model.hold_as_bits`).
    The KV cache takes the weights' floating dtype, never the bits' integers: GPT-2's first leaf is
    its layer stack, and a cache built in its dtype (uint16) once turned every key and value into
    integers and decoded garbage. Greedy tokens equal those of the bf16 weights."""
    config = tiny_config(family)
    model = Model(config, remat=True)
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), model.init(jax.random.key(0)))
    held = model.hold_as_bits(params)
    assert jax.tree.leaves(held)[0].dtype == jnp.uint16  # the case a first-leaf dtype gets wrong
    ids, mask = left_pad([[5, 6, 7, 8], [9, 10]], pad_id=0)
    embeds = model.embed(params, ids)
    want, _ = generate(Model(config), params, embeds, mask, max_new_tokens=6)
    got, _ = generate(model, held, embeds, mask, max_new_tokens=6)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
