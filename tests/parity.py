"""Checks tests/test_families.py runs on every architecture against `transformers` (PyTorch, fp32,
eager attention) on the tiny random models of conftest.TINY: logits, greedy generation, the KV
cache, the HF state dict both ways, adaption prompts against PEFT."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.inference.decode import generate, left_pad
from jaxprompt.models import Model, load_pretrained, positions_from_mask, save_pretrained
from jaxprompt.models.convert import tied_head_key, to_hf_state_dict
from jaxprompt.models.registry import architecture

LENGTHS = (10, 7, 4)  # longer than the test windows (4), so sliding windows are exercised


def padded_batch(padding: str, vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three sequences of lengths 10, 7, 4 padded to 10 on the given side."""
    rng = np.random.RandomState(seed)
    T = max(LENGTHS)
    tokens = np.full((len(LENGTHS), T), 1, np.int64)
    mask = np.zeros((len(LENGTHS), T), np.int64)
    for b, n in enumerate(LENGTHS):
        cols = slice(0, n) if padding == "right" else slice(T - n, T)
        tokens[b, cols] = rng.randint(3, vocab, n)
        mask[b, cols] = 1
    return tokens, mask


def torch_logits(pt_model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import torch

    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        return pt_model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                        position_ids=torch.tensor(positions)).logits.float().numpy()


def check_logits(pt_model, directory: str) -> float:
    """fp32 logits within 1e-4 of transformers on left- and right-padded batches, and every real
    token's logits equal to its sequence run alone. Returns the largest difference seen."""
    config, params = load_pretrained(directory)
    model = Model(config)
    worst = 0.0
    for padding in ("right", "left"):
        tokens, mask = padded_batch(padding, config.vocab_size)
        ours = np.asarray(model.logits(params, jnp.asarray(tokens), jnp.asarray(mask)))
        ref = torch_logits(pt_model, tokens, mask)
        real = mask.astype(bool)
        assert np.abs(ref[real]).max() > 1.0  # far from uniform: the comparison means something
        np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)
        worst = max(worst, float(np.abs(ours[real] - ref[real]).max()))
        for b in range(len(LENGTHS)):
            alone = tokens[b, real[b]][None]
            np.testing.assert_allclose(ours[b, real[b]], torch_logits(pt_model, alone, np.ones_like(alone))[0],
                                       atol=1e-4, rtol=0)
    return worst


def check_greedy_generation(pt_model, directory: str, new_tokens: int = 8) -> None:
    """Greedy tokens identical to `generate(do_sample=False)` on a left-padded batch."""
    import torch

    config, params = load_pretrained(directory)
    model = Model(config)
    seqs = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [20, 21, 22, 23, 24, 25, 26, 27]]
    ids, mask = left_pad(seqs, pad_id=1)
    ours, lengths = generate(model, params, model.embed(params, ids), mask, max_new_tokens=new_tokens)
    with torch.no_grad():
        ref = pt_model.generate(input_ids=torch.tensor(np.asarray(ids)),
                                attention_mask=torch.tensor(np.asarray(mask)).long(), max_new_tokens=new_tokens,
                                do_sample=False, pad_token_id=1, eos_token_id=None)
    np.testing.assert_array_equal(np.asarray(ours), ref[:, ids.shape[1]:].numpy())
    assert list(np.asarray(lengths)) == [new_tokens] * len(seqs)


def recomputed_greedy(model, params, seqs, n):
    """Reference decoding: re-run the whole sequence for every new token (left-padded to one
    length, so one compilation serves every step)."""
    logits_fn = jax.jit(model.logits)
    width = max(map(len, seqs)) + n
    out = [list(s) for s in seqs]
    for _ in range(n):
        ids, mask = left_pad([[1] * (width - len(s)) + s for s in out], pad_id=1)
        mask = jnp.asarray([[False] * (width - len(s)) + [True] * len(s) for s in out])
        logits = logits_fn(params, ids, mask)
        for b, token in enumerate(np.asarray(jnp.argmax(logits[:, -1], -1))):
            out[b].append(int(token))
    return np.array([s[len(seq):] for s, seq in zip(out, seqs)])


def check_cache(directory: str) -> None:
    """Cached decoding equals recomputing the whole sequence; incremental logits (prefill, then one
    token at a time) equal one full forward."""
    config, params = load_pretrained(directory)
    model = Model(config)
    seqs = [[5, 6, 7, 8, 9], [11, 12, 13]]
    ids, mask = left_pad(seqs, pad_id=1)
    cached, _ = generate(model, params, model.embed(params, ids), mask, max_new_tokens=6)
    np.testing.assert_array_equal(np.asarray(cached), recomputed_greedy(model, params, seqs, 6))

    tokens, mask = padded_batch("left", config.vocab_size)
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask).astype(bool)
    full = jax.jit(model.logits)(params, tokens, mask)
    positions = positions_from_mask(mask)
    cache = model.init_cache(len(LENGTHS), tokens.shape[1])
    forward = jax.jit(lambda params, t, p, m, c: model.forward(params, model.embed(params, t), p, m, c))
    steps = [(0, 6)] + [(t, t + 1) for t in range(6, tokens.shape[1])]
    for a, b in steps:
        logits, cache = forward(params, tokens[:, a:b], positions[:, a:b], mask[:, a:b], cache)
        real = np.asarray(mask[:, a:b])
        np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(full[:, a:b])[real], atol=1e-5)


def check_state_dict(pt_model, directory: str, out_dir: str) -> None:
    """params -> HF state dict equals PyTorch's bit for bit; `save_pretrained` loads back exactly in
    jaxprompt and in transformers (same logits)."""
    from transformers import AutoModelForCausalLM

    config, params = load_pretrained(directory)
    state = to_hf_state_dict(config, params)
    aliases = architecture(config.model_type).key_aliases  # transformers' own spelling -> the published one
    ref = {aliases.get(k, k): v.numpy() for k, v in pt_model.state_dict().items()}
    head = tied_head_key(config)
    if head:  # a tied head is the embedding table: not saved separately
        ref.pop(head)
    assert set(state) == set(ref), (set(state) ^ set(ref))
    for k in ref:
        np.testing.assert_array_equal(state[k], ref[k], err_msg=k)
    save_pretrained(config, params, out_dir)
    config2, params2 = load_pretrained(out_dir)
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params, params2)
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, attn_implementation="eager").eval()
    tokens, mask = padded_batch("right", config.vocab_size)
    real = mask.astype(bool)
    np.testing.assert_allclose(torch_logits(reloaded, tokens, mask)[real], torch_logits(pt_model, tokens, mask)[real],
                               atol=1e-5, rtol=0)


def check_adapter_against_peft(pt_model, directory: str, adapter_len: int = 3, adapter_layers: int = 1) -> None:
    """PEFT's ADAPTION_PROMPT (random prompts, non-zero gates) gives the logits of our `Adapter`
    holding the same tensors in the top layers and zero gates below."""
    import copy

    import peft
    import torch

    from jaxprompt.models.layers.attention import Adapter

    config, params = load_pretrained(directory)
    model = Model(config)
    peft_model = peft.get_peft_model(copy.deepcopy(pt_model), peft.AdaptionPromptConfig(
        adapter_len=adapter_len, adapter_layers=adapter_layers, task_type="CAUSAL_LM")).eval()
    torch.manual_seed(1)
    prompts, gates = [], []
    for name, param in peft_model.named_parameters():
        with torch.no_grad():
            if name.endswith("adaption_prompt"):
                prompts.append(param.normal_().numpy()[0].copy())
            elif name.endswith("adaption_gate"):
                gates.append(float(param.fill_(0.5 + len(gates)).item()))
    assert len(prompts) == len(gates) == adapter_layers
    lower = config.n_layers - adapter_layers
    adapter = Adapter(prompt=jnp.asarray(np.concatenate([np.zeros((lower, adapter_len, config.d_model), np.float32),
                                                         np.stack(prompts)])),
                      gate=jnp.asarray([0.0] * lower + gates, jnp.float32))
    for padding in ("right", "left"):
        tokens, mask = padded_batch(padding, config.vocab_size)
        ref = torch_logits(peft_model, tokens, mask)
        plain = torch_logits(pt_model, tokens, mask)
        mask_j = jnp.asarray(mask)
        ours, _ = model.forward(params, model.embed(params, jnp.asarray(tokens)), positions_from_mask(mask_j), mask_j,
                                adapter=adapter)
        real = mask.astype(bool)
        assert np.abs(ref[real] - plain[real]).max() > 0.1  # the adapter changes the outputs
        np.testing.assert_allclose(np.asarray(ours)[real], ref[real], atol=1e-4, rtol=0)
