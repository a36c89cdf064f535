"""Frozen GPT-2 / OPT against the PyTorch reference on tiny random configs."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from jaxprompt.models.config import PRESETS, ConfigError, ModelConfig, preset
from jaxprompt.models import Model, positions_from_mask
from jaxprompt.models.convert import load_pretrained, to_hf_state_dict
from jaxprompt.models.generate import Sampling, generate, left_pad

torch = pytest.importorskip("torch")

VARIANTS = ["gpt2", "gpt2-untied", "opt", "opt-post-ln-proj", "opt-pre-ln-proj"]


def _batch(padding: str, vocab: int = 128, seed: int = 0):
    """Three sequences of lengths 10, 7, 4 padded to 10 on the given side."""
    rng = np.random.RandomState(seed)
    lengths = [10, 7, 4]
    tokens = np.full((3, 10), 1, np.int64)
    mask = np.zeros((3, 10), np.int64)
    for b, n in enumerate(lengths):
        cols = slice(0, n) if padding == "right" else slice(10 - n, 10)
        tokens[b, cols] = rng.randint(3, vocab, n)
        mask[b, cols] = 1
    return tokens, mask


def _torch_logits(pt_model, tokens, mask):
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        return pt_model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                        position_ids=torch.tensor(positions)).logits.numpy()


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_pytorch(tiny_hf, variant, padding):
    pt_model, directory = tiny_hf(variant)
    config, params = load_pretrained(directory)
    model = Model(config)
    tokens, mask = _batch(padding)
    ours = np.asarray(model.logits(params, jnp.asarray(tokens), jnp.asarray(mask)))
    ref = _torch_logits(pt_model, tokens, mask)
    real = mask.astype(bool)
    assert np.abs(ref).max() > 1.0  # logits far from uniform: the comparison means something
    np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)
    # each real token's logits equal those of the sequence run alone, unpadded
    for b in range(3):
        alone = tokens[b, real[b]][None]
        ref_alone = _torch_logits(pt_model, alone, np.ones_like(alone))[0]
        np.testing.assert_allclose(ours[b, real[b]], ref_alone, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", ["gpt2", "opt", "opt-post-ln-proj"])
def test_greedy_generation_matches_transformers(tiny_hf, variant):
    pt_model, directory = tiny_hf(variant)
    config, params = load_pretrained(directory)
    model = Model(config)
    seqs = [[5, 6, 7, 8, 9], [11, 12, 13], [20, 21, 22, 23, 24, 25, 26]]
    ids, mask = left_pad(seqs, pad_id=1)
    ours, lengths = generate(model, params, model.embed(params, ids), mask, max_new_tokens=10)
    with torch.no_grad():
        ref = pt_model.generate(input_ids=torch.tensor(np.asarray(ids)), attention_mask=torch.tensor(np.asarray(mask)).long(),
                                max_new_tokens=10, do_sample=False, pad_token_id=1, eos_token_id=None)
    np.testing.assert_array_equal(np.asarray(ours), ref[:, ids.shape[1]:].numpy())
    assert list(np.asarray(lengths)) == [10, 10, 10]


def _generate_without_cache(model, params, seqs, n):
    """Reference decoding: re-run the whole sequence for every new token."""
    out = [list(s) for s in seqs]
    for _ in range(n):
        ids, mask = left_pad(out, pad_id=1)
        logits = model.logits(params, ids, mask)
        for b, token in enumerate(np.asarray(jnp.argmax(logits[:, -1], -1))):
            out[b].append(int(token))
    return np.array([s[len(seq):] for s, seq in zip(out, seqs)])


@pytest.mark.parametrize("variant", ["gpt2", "opt-pre-ln-proj"])
def test_cache_equals_recomputation(tiny_hf, variant):
    _, directory = tiny_hf(variant)
    config, params = load_pretrained(directory)
    model = Model(config)
    seqs = [[5, 6, 7, 8, 9], [11, 12, 13]]
    ids, mask = left_pad(seqs, pad_id=1)
    cached, _ = generate(model, params, model.embed(params, ids), mask, max_new_tokens=6)
    np.testing.assert_array_equal(np.asarray(cached), _generate_without_cache(model, params, seqs, 6))

    # incremental logits (prefill 6 tokens, then 1 at a time) equal one full forward
    tokens, mask = _batch("left")
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask).astype(bool)
    full = model.logits(params, tokens, mask)
    positions = positions_from_mask(mask)
    cache = model.init_cache(3, 10)
    steps = [(0, 6)] + [(t, t + 1) for t in range(6, 10)]
    for a, b in steps:
        logits, cache = model.forward(params, model.embed(params, tokens[:, a:b]), positions[:, a:b], mask[:, a:b], cache)
        real = np.asarray(mask[:, a:b])
        np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(full[:, a:b])[real], atol=1e-5)


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
    top1, _ = generate(model, params, embeds, mask, max_new_tokens=6, sampling=Sampling(1.0, top_k=1),
                       rng=jax.random.key(3))
    tiny_p, _ = generate(model, params, embeds, mask, max_new_tokens=6, sampling=Sampling(1.0, top_p=1e-6),
                         rng=jax.random.key(4))
    np.testing.assert_array_equal(top1, greedy)
    np.testing.assert_array_equal(tiny_p, greedy)
    a, _ = generate(model, params, embeds, mask, max_new_tokens=6, sampling=Sampling(1.5), rng=jax.random.key(1))
    b, _ = generate(model, params, embeds, mask, max_new_tokens=6, sampling=Sampling(1.5), rng=jax.random.key(1))
    c, _ = generate(model, params, embeds, mask, max_new_tokens=6, sampling=Sampling(1.5), rng=jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# published parameter counts (tied lm_head counted once)
EXPECTED_PARAMS = {
    "gpt2": 124_439_808, "distilgpt2": 81_912_576, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200, "facebook/opt-125m": 125_239_296, "facebook/opt-350m": 331_196_416,
    "facebook/opt-1.3b": 1_315_758_080, "facebook/opt-2.7b": 2_651_596_800, "facebook/opt-6.7b": 6_658_473_984,
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_full_size_shapes_without_memory(name):
    model = Model(preset(name))
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == EXPECTED_PARAMS[name]
    # the forward pass traces at full size too (shapes only)
    tokens = jax.ShapeDtypeStruct((2, 8), jnp.int32)
    logits = jax.eval_shape(lambda p, t: model.logits(p, t), shapes, tokens)
    assert logits.shape == (2, 8, model.config.vocab_size) and logits.dtype == jnp.float32


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_round_trip_is_exact(tiny_hf, tmp_path, variant):
    pt_model, directory = tiny_hf(variant)
    config, params = load_pretrained(directory)
    state = to_hf_state_dict(config, params)
    ref = {k: v.numpy() for k, v in pt_model.state_dict().items()}
    if config.tie_word_embeddings:
        ref.pop("lm_head.weight")
    assert set(state) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(state[k], ref[k], err_msg=k)

    from jaxprompt.models.convert import save_pretrained
    save_pretrained(config, params, str(tmp_path))
    config2, params2 = load_pretrained(str(tmp_path))
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params, params2)


def test_config_round_trip():
    for name in PRESETS:
        config = preset(name)
        assert ModelConfig.from_hf_config(config.to_hf_config()) == config


def test_bf16_load_casts_every_leaf(tiny_hf):
    _, directory = tiny_hf("opt-pre-ln-proj")
    config, p32 = load_pretrained(directory)
    _, p16 = load_pretrained(directory, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(p16)} == {jnp.dtype(jnp.bfloat16)}
    tokens, mask = map(jnp.asarray, _batch("right"))
    model = Model(config)
    l32, l16 = model.logits(p32, tokens, mask), model.logits(p16, tokens, mask)
    assert l16.dtype == jnp.float32  # logits stay fp32 under bf16 compute
    real = np.asarray(mask).astype(bool)
    assert np.abs(np.asarray(l32 - l16))[real].max() < 0.1 * np.abs(np.asarray(l32)).max()


def test_sharded_safetensors_and_pytorch_bin(tiny_hf, tmp_path):
    pt_model, directory = tiny_hf("gpt2")
    _, ref = load_pretrained(directory)
    pt_model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    _, sharded = load_pretrained(str(tmp_path / "sharded"))
    jax.tree.map(np.testing.assert_array_equal, ref, sharded)

    (tmp_path / "bin").mkdir()
    torch.save(pt_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "sharded" / "config.json").read_text())
    _, from_bin = load_pretrained(str(tmp_path / "bin"))
    jax.tree.map(np.testing.assert_array_equal, ref, from_bin)


def test_original_gpt2_key_names_load(tiny_hf, tmp_path):
    """The hub's `gpt2` weights have no `transformer.` prefix and carry attention-mask buffers."""
    from safetensors.numpy import save_file

    pt_model, directory = tiny_hf("gpt2")
    _, ref = load_pretrained(directory)
    state = {k.removeprefix("transformer."): v.numpy() for k, v in pt_model.state_dict().items() if k != "lm_head.weight"}
    state["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(open(f"{directory}/config.json").read())
    _, params = load_pretrained(str(tmp_path))
    jax.tree.map(np.testing.assert_array_equal, ref, params)
