"""Prompt methods: they train (judged on held-out examples), insert where the template says, serve
one inference form, and select per-example prompts for multi-task batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ANTONYM_PAIRS, program_values

from jaxprompt.config import LoopConfig, OptimizerConfig
from jaxprompt.data.batches import Batches, collate, eval_batches
from jaxprompt.data.templates import Template, common_prefix_length, encode
from jaxprompt.prompts import METHODS, MultiTask, SoftPrompt, method_from_spec, method_spec
from jaxprompt.prompts.forward import prompt_inputs
from jaxprompt.prompts.loss import prompt_loss
from jaxprompt.training.loop import fit
from jaxprompt.training.optim import make_optimizer

TEMPLATE = Template("Here are two {prompt} {word1} and", " {word2}")
P = 4
# A label task a random model can learn from a prompt: held-out rows have unseen inputs, so a lower
# held-out loss means the prompt learned the task (here: answer yes/no), not the training rows.
LABELLED = [(a, "yes") for a, _ in ANTONYM_PAIRS] + [(b, "no") for _, b in ANTONYM_PAIRS]
TRAIN, HELD_OUT = LABELLED[:12] + LABELLED[16:28], LABELLED[12:16] + LABELLED[28:]


def _encode(tokenizer, pairs, method=None, task_id=0, template=TEMPLATE):
    return [encode(template, {"word1": a, "word2": b}, tokenizer, method or METHODS["soft"](length=P), task_id=task_id)
            for a, b in pairs]


def _fit(model, frozen, method, train, held_out, steps=40, lr=0.05):
    prompt = method.init(jax.random.key(1), model, frozen, TEMPLATE.n_virtual(P))
    optimizer = make_optimizer(OptimizerConfig(lr=lr), prompt, total_steps=steps)
    S = common_prefix_length(train) if not method.per_example else 0
    val = [b for _, b in eval_batches(held_out, 8, 50256)]
    return fit(prompt_loss(model, method), optimizer, prompt, frozen, Batches(train, 8, 50256, shared_len=S), val,
               LoopConfig(steps=steps, eval_every=steps // 2), eval_loss_fn=prompt_loss(model, method, inference=True))


EVERY_METHOD = [  # one case of each method, on GPT-2; those that enter the layers on Llama and Gemma 2 too
    ("soft", {}),
    ("ptuning", {"encoder": "mlp", "hidden": 32}),
    ("prefix", {}),
    ("prefix", {"reparam_hidden": 32, "top_layers": 1}),
    ("relaxed", {"anneal_steps": 40}),
    ("pez", {}),
    ("adaption", {"top_layers": 1}),
    ("multitask", {}),
]
GPT2_VARIANTS = [  # and the initialisers and encoders, on GPT-2
    ("soft", {"init_from": "uniform"}),
    ("soft", {"init_from": "sampled_vocab"}),
    ("ptuning", {"encoder": "lstm", "hidden": 16}),
]
# prefix and adaption prompts enter every attention layer (grouped keys and values, Gemma 2's sliding
# window and soft-capping); the others enter at the embeddings, which every family shares
IN_THE_LAYERS = ("prefix", "adaption")
METHOD_CASES = ([(family, n, o) for family in ("gpt2", "llama", "gemma2") for n, o in EVERY_METHOD
                 if family == "gpt2" or n in IN_THE_LAYERS]
                + [("gpt2", n, o) for n, o in GPT2_VARIANTS])


@pytest.mark.parametrize("family,name,options", METHOD_CASES,
                         ids=[f"{f}-{n}-{'-'.join(map(str, o.values()))}" for f, n, o in METHOD_CASES])
def test_every_method_trains_on_held_out_examples(tiny_lms, gpt2_tokenizer, family, name, options):
    """Validation is on inputs never trained on, scored in the inference form evaluation reports.
    Measured drops (nats, 40 steps): soft 2.3-3.2, p-tuning 2.3-2.7, prefix 3.1-3.3, relaxed 1.6, PEZ 1.1."""
    model, frozen = tiny_lms(family)
    if name == "multitask":  # two tasks in every batch, each example read by its task's prompt
        method = MultiTask(base=METHODS["soft"](length=P), n_tasks=2)
        split = lambda rows: [(0, rows[:len(rows) // 2]), (1, rows[len(rows) // 2:])]
        train, held_out = ([e for t, rows in split(pairs) for e in _encode(gpt2_tokenizer, rows, method, task_id=t)]
                           for pairs in (TRAIN, HELD_OUT))
    else:
        method = METHODS[name](length=P, **options)
        train, held_out = _encode(gpt2_tokenizer, TRAIN, method), _encode(gpt2_tokenizer, HELD_OUT, method)
    result = _fit(model, frozen, method, train, held_out, lr={"relaxed": 2.0}.get(name, 0.05))
    val = [(h["step"], h["val_loss"]) for h in result.history if "val_loss" in h]
    assert [s for s, _ in val] == [0, 20, 40]
    assert val[-1][1] < val[0][1] - 0.5, (family, name, val)


def test_text_init_uses_the_words(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm
    ids = tuple(gpt2_tokenizer.encode(" antonyms"))
    method = METHODS["soft"](length=5, init_from="text", init_ids=ids)
    prompt = method.init(jax.random.key(0), model, frozen, 5)
    table = np.asarray(model.embedding_table(frozen))
    np.testing.assert_array_equal(prompt["embeddings"], table[np.resize(np.asarray(ids), 5)])


def test_insertion_positions(tiny_lm, gpt2_tokenizer):
    """Virtual tokens land exactly on the {prompt} slots, with left or right padding, in any template."""
    model, frozen = tiny_lm
    template = Template("{prompt:2} Q: {word1} {prompt:3} A:", " {word2}")
    examples = [encode(template, {"word1": a, "word2": b}, gpt2_tokenizer, SoftPrompt(length=9)) for a, b in ANTONYM_PAIRS[:3]]
    method = METHODS["soft"](length=9)
    prompt = method.init(jax.random.key(0), model, frozen, template.n_virtual(9))
    assert prompt["embeddings"].shape == (5, 32)
    for padding in ("left", "right"):
        batch = collate(examples, 50256, padding)
        embeds = prompt_inputs(model, frozen, method, prompt, batch).embeds
        for b, e in enumerate(examples):
            row = np.flatnonzero(batch["mask"][b])
            slots = np.asarray(e.slots)
            for t_rel, t in enumerate(row):
                want = prompt["embeddings"][slots[t_rel]] if slots[t_rel] >= 0 else model.embed(frozen, e.tokens[t_rel])
                np.testing.assert_array_equal(embeds[b, t], want)
            assert list(slots[slots >= 0]) == [0, 1, 2, 3, 4]
            first = gpt2_tokenizer.encode(" Q:")
            assert e.tokens[2:2 + len(first)] == first  # text after the first slot keeps its space


def test_multitask_batch_uses_each_examples_prompt(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm
    for name in ("soft", "prefix"):
        method = MultiTask(base=METHODS[name](length=P), n_tasks=2)
        assert method.length == P and method.per_example and method.prefix_positions == (P if name == "prefix" else 0)
        prompt = method.init(jax.random.key(0), model, frozen, P)
        ex0 = _encode(gpt2_tokenizer, ANTONYM_PAIRS[:3], method, task_id=0)
        ex1 = _encode(gpt2_tokenizer, ANTONYM_PAIRS[3:6], method, task_id=1)
        mixed = prompt_loss(model, method)(prompt, frozen, collate(ex0 + ex1, 50256), None, 0)
        alone = []
        for t, ex in ((0, ex0), (1, ex1)):
            base, task_prompt = method.task_view(prompt, t)
            alone.append(prompt_loss(model, base)(task_prompt, frozen, collate(ex, 50256), None, 0))
        np.testing.assert_allclose(mixed[0], alone[0][0] + alone[1][0], rtol=1e-5)
        assert abs(float(alone[0][0] / alone[0][1]) - float(alone[1][0] / alone[1][1])) > 1e-3  # prompts differ


def test_bf16_frozen_weights_fp32_prompt(tiny_lm, gpt2_tokenizer):
    from jaxprompt.precision import Policy

    model, frozen = tiny_lm
    frozen16 = Policy.of("bf16").cast_frozen(frozen)
    method = METHODS["soft"](length=P)
    result = _fit(model, frozen16, method, _encode(gpt2_tokenizer, TRAIN), _encode(gpt2_tokenizer, HELD_OUT), steps=20)
    assert result.state.params["embeddings"].dtype == jnp.float32
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"] - 0.5


def _table(model, frozen):
    return np.asarray(model.embedding_table(frozen), np.float64)


def test_inference_forms_do_not_depend_on_the_step(tiny_lm):
    """Each method's inference form equals its end-of-training form, computed here independently."""
    model, frozen = tiny_lm
    table = _table(model, frozen)
    key = jax.random.key(3)

    relaxed = METHODS["relaxed"](length=3, tau_end=0.1, anneal_steps=50)
    prompt = relaxed.init(key, model, frozen, 3)
    prompt = {"logits": prompt["logits"] + jax.random.normal(key, prompt["logits"].shape)}
    baked_method, baked = relaxed.inference_prompt(prompt, model, frozen)
    logits = np.asarray(prompt["logits"], np.float64) / 0.1
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    expected = (weights / weights.sum(-1, keepdims=True)) @ table
    assert isinstance(baked_method, SoftPrompt)
    np.testing.assert_allclose(baked["embeddings"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(baked["embeddings"], relaxed.virtual_tokens(prompt, model, frozen, 50), atol=1e-5)
    assert np.abs(baked["embeddings"] - relaxed.virtual_tokens(prompt, model, frozen, 0)).max() > 0.01  # tau 1 differs

    pez = METHODS["pez"](length=3)
    prompt = pez.init(key, model, frozen, 3)
    prompt = {"embeddings": prompt["embeddings"] + 0.05 * jax.random.normal(key, prompt["embeddings"].shape)}
    e = np.asarray(prompt["embeddings"], np.float64)
    cos = (e / np.linalg.norm(e, axis=-1, keepdims=True)) @ (table / np.linalg.norm(table, axis=-1, keepdims=True)).T
    np.testing.assert_array_equal(pez.inference_prompt(prompt, model, frozen)[1]["embeddings"],
                                  np.asarray(model.embedding_table(frozen))[cos.argmax(-1)])

    # p-tuning bakes its encoder: Liu et al.'s MLP (two ReLU layers, then a linear map), here in float64
    ptuning = METHODS["ptuning"](length=3, hidden=8)
    prompt = ptuning.init(key, model, frozen, 3)
    layers = [{k: np.asarray(v, np.float64) for k, v in prompt["encoder"][f"Dense_{i}"].items()} for i in range(3)]
    x = np.asarray(prompt["inputs"], np.float64)
    for i, layer in enumerate(layers):
        x = x @ layer["kernel"] + layer["bias"]
        x = np.maximum(x, 0.0) if i < 2 else x
    baked_method, baked = ptuning.inference_prompt(prompt, model, frozen)
    assert isinstance(baked_method, SoftPrompt) and baked_method.length == 3
    assert np.abs(x).max() > 0.01  # an encoder output that is not trivially zero
    np.testing.assert_allclose(baked["embeddings"], x, rtol=1e-5, atol=1e-6)

    prefix = METHODS["prefix"](length=3, reparam_hidden=8)
    prompt = prefix.init(key, model, frozen)
    baked_method, baked = prefix.inference_prompt(prompt, model, frozen)
    k, v, _ = prefix.prefix(prompt, model, frozen, 0)
    assert baked_method.reparam_hidden is None
    np.testing.assert_array_equal(baked_method.prefix(baked, model, frozen, 0)[0], k)

    multi = MultiTask(base=relaxed, n_tasks=2)
    prompt = multi.init(key, model, frozen, 3)
    baked_method, baked = multi.inference_prompt(prompt, model, frozen)
    for t in range(2):
        base, task_prompt = multi.task_view(prompt, t)
        np.testing.assert_allclose(baked["embeddings"][t], base.inference_prompt(task_prompt, model, frozen)[1]["embeddings"],
                                   atol=1e-6)
    assert baked_method.n_tasks == 2 and isinstance(baked_method.base, SoftPrompt)


def test_method_specs_round_trip():
    methods = [METHODS["soft"](length=3, init_from="text", init_ids=(1, 2)),
               METHODS["ptuning"](length=2, encoder="lstm", hidden=4),
               METHODS["prefix"](length=2, top_layers=1, reparam_hidden=8),
               METHODS["relaxed"](length=2, tau_end=0.2, anneal_steps=9), METHODS["pez"](length=5),
               MultiTask(base=METHODS["prefix"](length=3), n_tasks=3)]
    for m in methods:
        assert method_from_spec(method_spec(m)) == m
    spec = method_spec(methods[0])
    spec["colour"] = "red"
    with pytest.raises(ValueError, match="field 'colour'"):
        method_from_spec(spec)


# ---- costs that grow with the model -----------------------------------------------------------------

def _bf16_llama(vocab_size=50257, **overrides):
    from conftest import tiny_config

    from jaxprompt.models import Model

    model = Model(tiny_config("llama", vocab_size=vocab_size, d_model=256, d_embed=256, d_ff=1024, n_layers=4,
                              n_heads=4, n_kv_heads=2, **overrides))
    return model, jax.tree.map(lambda x: x.astype(jnp.bfloat16), model.init(jax.random.key(0)))


def _float32_shapes(fn, *args) -> set:
    """Shapes of every float32 value the program creates (nested programs included)."""
    return {shape for shape, dtype in program_values(fn, *args) if dtype == jnp.float32}


def test_prefix_init_makes_no_float32_copy_of_the_model():
    """The init runs the frozen model in its own dtype: no weight of the model is ever cast to
    float32 (the init used to copy every weight), and the keys/values come out float32."""
    model, frozen = _bf16_llama()
    method = METHODS["prefix"](length=8)
    created = _float32_shapes(lambda f: method.init(jax.random.key(0), model, f, 0), frozen)
    weights = {x.shape for x in jax.tree.leaves(frozen) if x.ndim >= 2}
    assert not created & weights, created & weights
    kv = method.init(jax.random.key(0), model, frozen, 0)["kv"]
    assert kv.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(kv)))


def test_soft_init_reads_column_statistics_without_a_float32_table():
    """The default init's per-dimension mean and std of a bf16 table: those of float64 numpy, with
    no program holding a float32 table (a Llama-3.2-1B-sized one compiled on abstract arrays)."""
    from jaxprompt.prompts.init import _column_mean, _column_stats, _column_std

    table = (jax.random.normal(jax.random.key(0), (5000, 64)) * 0.02 + 0.01).astype(jnp.bfloat16)
    mean, std = _column_stats(table)
    reference = np.asarray(table, np.float64)
    np.testing.assert_allclose(mean, reference.mean(0), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(std, reference.std(0), rtol=1e-5)
    big = jax.ShapeDtypeStruct((128256, 2048), jnp.bfloat16)
    programs = (_column_mean.lower(big), _column_std.lower(big, jax.ShapeDtypeStruct((2048,), jnp.float32)))
    assert all(p.compile().memory_analysis().temp_size_in_bytes < 1e6 for p in programs)


@pytest.mark.parametrize("name", ["relaxed", "pez"])
def test_vocabulary_prompts_make_no_float32_table(name):
    """A relaxed or PEZ step (forward and backward) reads the embedding table in its own dtype:
    the program creates no [V, E] float32 array."""
    model, frozen = _bf16_llama()
    method = METHODS[name](length=8)
    prompt = method.init(jax.random.key(0), model, frozen, 8)
    step = lambda f, p: jax.grad(lambda p: jnp.sum(method.virtual_tokens(p, model, f, 0) ** 2))(p)
    table_shape = (model.config.vocab_size, model.config.d_embed)
    assert table_shape not in _float32_shapes(step, frozen, prompt)


def test_pez_projection_matches_a_float32_reference(tiny_lm):
    """The rewritten similarity picks the same tokens as cosine similarity computed in float64."""
    model, frozen = tiny_lm
    table = np.asarray(model.embedding_table(frozen), np.float64)
    vectors = np.asarray(jax.random.normal(jax.random.key(3), (6, table.shape[1])), np.float64)
    from jaxprompt.prompts.soft import nearest_tokens

    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    reference = np.argmax(unit(vectors) @ unit(table).T, -1)
    np.testing.assert_array_equal(nearest_tokens(jnp.asarray(vectors, jnp.float32), jnp.asarray(table, jnp.float32)),
                                  reference)
    l2 = np.argmin(((vectors[:, None] - table[None]) ** 2).sum(-1), -1)
    np.testing.assert_array_equal(
        nearest_tokens(jnp.asarray(vectors, jnp.float32), jnp.asarray(table, jnp.float32), "l2"), l2)


def _sentencepiece_style(specials: list[str], unused: int, words: list[str]):
    """A byte-fallback BPE tokenizer laid out as Llama-2's (specials, 256 byte tokens, pieces) or
    Gemma's (specials, control and unused slots, byte tokens, pieces), built offline."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers

    from jaxprompt.data.tokenizer import Tokenizer

    vocab = {}
    for t in specials + [f"<unused{i}>" for i in range(unused)] + [f"<0x{b:02X}>" for b in range(256)]:
        vocab[t] = len(vocab)
    for ch in "▁abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(ch, len(vocab))
    merges = []
    for w in words:  # each word a chain of merges
        piece = "▁" + w
        cur = piece[0]
        for ch in piece[1:]:
            merges.append((cur, ch))
            cur += ch
            vocab.setdefault(cur, len(vocab))
    backend = HFTokenizer(models.BPE(vocab, merges, unk_token="<unk>",
                                     byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    backend.add_special_tokens([t for t in specials if t.startswith("<") and "unused" not in t])
    return Tokenizer(backend, eos_token_id=vocab[specials[1]])


WORDS = ["the", "and", "of", "to", "in", "is", "hot", "cold", "up", "down", "yes", "no", "big", "small"]
LLAMA_STYLE = dict(specials=["<unk>", "</s>", "<s>"], unused=0, words=WORDS)
GEMMA_STYLE = dict(specials=["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[multimodal]", "<start_of_turn>",
                             "<end_of_turn>"], unused=99, words=WORDS)


@pytest.mark.parametrize("style", [LLAMA_STYLE, GEMMA_STYLE], ids=["llama", "gemma"])
@pytest.mark.parametrize("name", ["pez", "soft-sampled", "prefix"])
def test_random_token_inits_draw_only_ordinary_words(style, name):
    """Sampled-vocabulary and random-token prefix inits never pick a byte, special, control or
    unused token: the ids they draw are checked against the tokenizer's own pieces."""
    from conftest import tiny_config

    from jaxprompt.config import MethodConfig
    from jaxprompt.data.tasks import BUILTIN
    from jaxprompt.models import Model
    from jaxprompt.prompts import method_from_config

    tokenizer = _sentencepiece_style(**style)
    V = tokenizer.vocab_size
    model = Model(tiny_config("llama", vocab_size=V, eos_token_id=1, bos_token_id=2))
    frozen = model.init(jax.random.key(0))  # random rows: each embedding names its token
    config = MethodConfig(name=name.split("-")[0], length=64,
                          init_from="sampled_vocab" if name == "soft-sampled" else None)  # pez, prefix: their own
    method = method_from_config(config, tokenizer, BUILTIN["antonyms"], steps=10)
    forbidden = set(range(len(style["specials"]) + style["unused"] + 256))  # specials, unused, bytes
    if name == "prefix":
        from jaxprompt.prompts.init import sample_ids

        drawn = set(np.asarray(sample_ids(jax.random.key(0), (512,), method.sample_pool, V)).tolist())
    else:
        table = np.asarray(model.embedding_table(frozen), np.float32)
        vectors = np.asarray(method.init(jax.random.key(0), model, frozen, 64)["embeddings"])
        drawn = {int(np.argmin(((table - v) ** 2).sum(-1))) for v in vectors}
    assert len(drawn) > 1 and not drawn & forbidden, sorted(tokenizer.backend.id_to_token(i) for i in drawn & forbidden)
    assert all(tokenizer.decode([i]).strip().isalpha() for i in drawn)


def test_make_method_builds_as_the_command_line_does_or_refuses(gpt2_tokenizer):
    """What the command line resolves from the run (the word pool random tokens come from, the init
    text, the run's length for annealing) a Python caller must give: never a silent other default."""
    from jaxprompt.prompts import make_method
    from jaxprompt.prompts.init import word_token_ids
    from jaxprompt.settings import SettingError

    for name, message in (("pez", "random word tokens of the vocabulary: pass tokenizer="),
                          ("prefix", "random word tokens of the vocabulary: pass tokenizer="),
                          ("relaxed", "anneals its temperature over the run: pass steps=")):
        with pytest.raises(SettingError, match=message):
            make_method(name, length=4)
    pez = make_method("pez", length=4, tokenizer=gpt2_tokenizer)
    assert pez.init_from == "sampled_vocab" and pez.sample_pool == word_token_ids(gpt2_tokenizer)
    text = make_method("soft", length=2, init_from="text", init_text="opposites", tokenizer=gpt2_tokenizer)
    assert text.init_ids == tuple(gpt2_tokenizer.encode(" opposites"))
    with pytest.raises(SettingError, match="has no setting 'hidden'"):
        make_method("soft", hidden=8)
    with pytest.raises(SettingError, match="init_text= needs init_from='text'"):
        make_method("soft", init_text="x", tokenizer=gpt2_tokenizer)
