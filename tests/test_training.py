"""The training core: gradients only for the prompt, every method trains, bounded compiles,
data parallel == single device, exact resume, NaN guard."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ANTONYM_PAIRS, REPO, tiny_config
from jaxprompt.data import Batches, Template, common_prefix_length, encode, eval_batches
from jaxprompt.loss import prompt_loss
from jaxprompt.models import Model
from jaxprompt.optim import OptimizerConfig, make_optimizer
from jaxprompt.prompts import MultiTask, make_method
from jaxprompt.train import LoopConfig, NonFiniteLossError, fit, make_train_step, TrainState

TEMPLATE = Template("Here are two {prompt} {word1} and", " {word2}")
P = 4


def _examples(tokenizer, template=TEMPLATE, pairs=ANTONYM_PAIRS, task_id=0, method=None):
    virtual = method is None or method.kind != "prefix"  # prefix tuning has no slots in the tokens
    return [encode(template, {"word1": a, "word2": b}, tokenizer, P, task_id=task_id, virtual=virtual)
            for a, b in pairs]


def _fit(model, frozen, method, examples=None, steps=30, lr=0.05, shared=True, **loop):
    examples = examples or _examples(_fit.tokenizer, method=method)
    prompt = method.init(jax.random.key(1), model, frozen, TEMPLATE.n_virtual(P))
    optimizer = make_optimizer(OptimizerConfig(lr=lr, total_steps=steps), prompt)
    S = common_prefix_length(examples) if shared and not isinstance(method, MultiTask) else 0
    val = [b for _, b in eval_batches(examples, 8, 50256)]
    config = LoopConfig(steps=steps, eval_every=loop.pop("eval_every", steps), progress=False, **loop)
    result = fit(prompt_loss(model, method, S), optimizer, prompt, frozen, Batches(examples, 8, 50256), val, config)
    return prompt, result


@pytest.fixture(autouse=True)
def _tok(gpt2_tokenizer):
    _fit.tokenizer = gpt2_tokenizer


def test_only_the_prompt_changes(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm
    before = jax.tree.map(np.array, frozen)
    prompt, result = _fit(model, frozen, make_method("soft", length=P), _examples(gpt2_tokenizer), steps=10)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, frozen))
    assert not np.allclose(prompt["embeddings"], result.state.params["embeddings"])
    # the gradient pytree is the prompt's: no gradient exists for frozen weights
    batch = Batches(_examples(gpt2_tokenizer), 8, 50256)(0)
    grads = jax.grad(lambda p: prompt_loss(model, make_method("soft", length=P))(p, frozen, batch, None, 0)[0])(prompt)
    assert jax.tree.structure(grads) == jax.tree.structure(prompt)


METHODS = [
    ("soft", {}),
    ("soft", {"init_from": "uniform"}),
    ("soft", {"init_from": "sampled_vocab"}),
    ("ptuning", {"encoder": "mlp", "hidden": 32}),
    ("ptuning", {"encoder": "lstm", "hidden": 16}),
    ("prefix", {}),
    ("prefix", {"reparam_hidden": 32, "top_layers": 1}),
    ("relaxed", {"anneal_steps": 1000}),
    ("pez", {}),
]


@pytest.mark.parametrize("name,options", METHODS, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in METHODS])
def test_every_method_trains(tiny_lm, gpt2_tokenizer, name, options):
    model, frozen = tiny_lm
    method = make_method(name, length=P, **options)
    lr = {"relaxed": 2.0, "pez": 0.05}.get(name, 0.05)
    _, result = _fit(model, frozen, method, steps=40, lr=lr, eval_every=20)
    val = [(h["step"], h["val_loss"]) for h in result.history if "val_loss" in h]
    assert [s for s, _ in val] == [0, 20, 40]
    assert val[-1][1] < val[0][1] - 0.1, (name, val)


def test_text_init_uses_the_words(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm
    ids = tuple(gpt2_tokenizer.encode(" antonyms"))
    method = make_method("soft", length=5, init_from="text", init_ids=ids)
    prompt = method.init(jax.random.key(0), model, frozen, 5)
    table = model.embedding_table(frozen)
    expected = table[jnp.resize(jnp.asarray(ids), (5,))]
    np.testing.assert_array_equal(prompt["embeddings"], expected)


def test_insertion_positions(tiny_lm, gpt2_tokenizer):
    """Virtual tokens land exactly on the {prompt} slots, with left or right padding, in any template."""
    from jaxprompt.data import collate
    from jaxprompt.prompts.apply import prompt_inputs

    model, frozen = tiny_lm
    template = Template("{prompt:2} Q: {word1} {prompt:3} A:", " {word2}")
    examples = [encode(template, {"word1": a, "word2": b}, gpt2_tokenizer, 9) for a, b in ANTONYM_PAIRS[:3]]
    method = make_method("soft", length=9)
    prompt = method.init(jax.random.key(0), model, frozen, template.n_virtual(9))
    assert prompt["embeddings"].shape == (5, 32)
    for padding in ("left", "right"):
        batch = collate(examples, 50256, padding)
        embeds, _ = prompt_inputs(model, frozen, method, prompt, batch)
        for b, e in enumerate(examples):
            row = np.flatnonzero(batch["mask"][b])
            slots = np.asarray(e.slots)
            for t_rel, t in enumerate(row):
                want = prompt["embeddings"][slots[t_rel]] if slots[t_rel] >= 0 else model.embed(frozen, e.tokens[t_rel])
                np.testing.assert_array_equal(embeds[b, t], want)
            assert list(slots[slots >= 0]) == [0, 1, 2, 3, 4]
            first = gpt2_tokenizer.encode(" Q:")
            assert e.tokens[2:2 + len(first)] == first  # text after the first slot keeps its space


def test_left_and_right_padding_give_the_same_loss(tiny_lm, gpt2_tokenizer):
    from jaxprompt.data import collate

    model, frozen = tiny_lm
    for name in ("soft", "prefix"):
        method = make_method(name, length=P)
        examples = _examples(gpt2_tokenizer, method=method)[:5]
        prompt = method.init(jax.random.key(0), model, frozen, P)
        losses = [prompt_loss(model, method)(prompt, frozen, collate(examples, 50256, side), None, 0)
                  for side in ("left", "right")]
        np.testing.assert_allclose(losses[0][0], losses[1][0], rtol=1e-5)


def test_gathered_loss_equals_full_masked_loss(tiny_lm, gpt2_tokenizer):
    """Logits at target positions only == the textbook loss over all positions with loss_mask."""
    from jaxprompt.data import collate
    from jaxprompt.loss import nll_sum
    from jaxprompt.prompts.apply import prompted_hidden

    model, frozen = tiny_lm
    batch = collate(_examples(gpt2_tokenizer, pairs=[("hot", "cold"), ("rich", "poor"), ("fast", "slow")]), 50256)
    method = make_method("soft", length=P)
    prompt = method.init(jax.random.key(0), model, frozen, P)
    logits = model.unembed(frozen, prompted_hidden(model, frozen, method, prompt, batch))
    full = nll_sum(logits[:, :-1], jnp.asarray(batch["tokens"][:, 1:]), jnp.asarray(batch["loss_mask"][:, 1:]))
    ours = prompt_loss(model, method)(prompt, frozen, batch, None, 0)
    np.testing.assert_allclose(ours, full, rtol=1e-6)


@pytest.mark.parametrize("name,options", [("soft", {}), ("prefix", {}), ("ptuning", {"hidden": 16})])
def test_shared_prefix_equals_unshared(tiny_lm, gpt2_tokenizer, name, options):
    """Computing the prompt + fixed text once at batch size 1 gives the same loss and gradient."""
    model, frozen = tiny_lm
    method = make_method(name, length=P, **options)
    examples = _examples(gpt2_tokenizer, method=method)
    batch = Batches(examples, 8, 50256)(0)
    prompt = method.init(jax.random.key(0), model, frozen, P)
    S = common_prefix_length(examples)
    assert S == len(gpt2_tokenizer.encode("Here are two")) + (0 if name == "prefix" else P)
    value_grad = lambda s: jax.value_and_grad(lambda p: prompt_loss(model, method, s)(p, frozen, batch, None, 0)[0])(prompt)
    (l0, g0), (l1, g1) = value_grad(0), value_grad(S)
    np.testing.assert_allclose(l0, l1, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g0, g1)


def test_prompt_gradients_match_finite_differences(tiny_lm, gpt2_tokenizer):
    model, frozen32 = tiny_lm
    for name, options in (("soft", {}), ("ptuning", {"hidden": 16}), ("prefix", {"reparam_hidden": 16})):
        method = make_method(name, length=P, **options)
        batch = Batches(_examples(gpt2_tokenizer, method=method), 4, 50256)(0)
        prompt = method.init(jax.random.key(0), model, frozen32, P)
        f = jax.jit(lambda p: prompt_loss(model, method)(p, frozen32, batch, None, 0)[0])
        grads = jax.grad(f)(prompt)
        direction = jax.tree.map(lambda x: jax.random.normal(jax.random.key(7), x.shape), prompt)
        eps = 1e-3
        shift = lambda s: jax.tree.map(lambda p, d: p + s * eps * d, prompt, direction)
        numeric = (f(shift(1.0)) - f(shift(-1.0))) / (2 * eps)
        analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
        np.testing.assert_allclose(numeric, analytic, rtol=2e-2, err_msg=name)


def test_prompt_gradient_matches_peft(tiny_hf):
    """Loss and prompt gradient equal PEFT prompt tuning on the same tiny GPT-2 (PyTorch) to 1e-4."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from jaxprompt.data import Encoded, collate
    from jaxprompt.models.convert import load_pretrained

    pt_model, directory = tiny_hf("gpt2")
    config, frozen = load_pretrained(directory)
    model = Model(config)
    method = make_method("soft", length=5)
    prompt = method.init(jax.random.key(0), model, frozen, 5)
    rng = np.random.RandomState(0)
    rows = [(list(rng.randint(3, 128, n)), list(rng.randint(3, 128, m))) for n, m in ((6, 2), (3, 1), (8, 3))]
    batch = collate([Encoded([0] * 5 + x + y, list(range(5)) + [-1] * (len(x) + len(y)), len(y)) for x, y in rows], 0)
    loss, grad = jax.value_and_grad(lambda p: jnp.divide(*prompt_loss(model, method)(p, frozen, batch, None, 0)))(prompt)

    peft_model = peft.get_peft_model(copy.deepcopy(pt_model), peft.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=5, prompt_tuning_init="RANDOM"))
    embedding = peft_model.prompt_encoder["default"].embedding
    embedding.weight.data = torch.tensor(np.asarray(prompt["embeddings"]))
    T = max(len(x) + len(y) for x, y in rows)
    ids = torch.zeros((3, T), dtype=torch.long)
    mask = torch.zeros((3, T), dtype=torch.long)
    labels = torch.full((3, T), -100)
    for b, (x, y) in enumerate(rows):
        ids[b, :len(x) + len(y)] = torch.tensor(x + y)
        mask[b, :len(x) + len(y)] = 1
        labels[b, len(x):len(x) + len(y)] = torch.tensor(y)
    out = peft_model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    np.testing.assert_allclose(float(loss), out.loss.item(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(grad["embeddings"]), embedding.weight.grad.numpy(), atol=1e-4)


def test_step_compiles_once_per_bucket(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm
    method = make_method("soft", length=P)
    traces = []
    base = prompt_loss(model, method)

    def counted(*args):
        traces.append(args[2]["tokens"].shape)  # runs at trace time only
        return base(*args)

    prompt = method.init(jax.random.key(0), model, frozen, P)
    short = _examples(gpt2_tokenizer)
    long = [encode(TEMPLATE, {"word1": "a " * 10 + a, "word2": b}, gpt2_tokenizer, P) for a, b in ANTONYM_PAIRS]
    batches = Batches(short, 8, 50256)
    long_batches = Batches(long, 8, 50256)
    data = lambda s: (batches if s % 3 else long_batches)(s)
    optimizer = make_optimizer(OptimizerConfig(lr=0.01), prompt)
    fit(counted, optimizer, prompt, frozen, data, None, LoopConfig(steps=12, progress=False))
    assert sorted(set(traces)) == [(8, 16), (8, 24)] and len(traces) == 2, traces


def test_nan_guard_names_the_step_and_keeps_checkpoints(tiny_lm, gpt2_tokenizer, tmp_path):
    model, frozen = tiny_lm
    method = make_method("soft", length=P)
    prompt = method.init(jax.random.key(0), model, frozen, P)
    examples = _examples(gpt2_tokenizer)
    good = Batches(examples, 8, 50256)

    def data(step):
        batch = good(step)
        if step == 7:  # a corrupted batch: one NaN loss weight
            batch["target_weight"][0, 0] = np.nan
        return batch

    val = [b for _, b in eval_batches(examples, 8, 50256)]
    optimizer = make_optimizer(OptimizerConfig(lr=0.01), prompt)
    with pytest.raises(NonFiniteLossError, match="not finite at step 7"):
        fit(prompt_loss(model, method), optimizer, prompt, frozen, data, val,
            LoopConfig(steps=20, eval_every=5, log_every=1, progress=False), run_dir=str(tmp_path))
    from jaxprompt.checkpoint import Checkpointer
    ckpt = Checkpointer(str(tmp_path))
    assert ckpt.latest_step() == 5
    restored, _ = ckpt.restore(TrainState.create(prompt, optimizer, jax.random.PRNGKey(0)))
    assert np.isfinite(np.asarray(restored.params["embeddings"])).all()


def test_killed_and_resumed_run_equals_uninterrupted(tiny_lm, gpt2_tokenizer, tmp_path):
    model, frozen = tiny_lm
    method = make_method("ptuning", length=P, hidden=16)
    prompt = method.init(jax.random.key(0), model, frozen, P)
    examples = _examples(gpt2_tokenizer)
    batches = Batches(examples, 8, 50256, seed=3)
    val = [b for _, b in eval_batches(examples[:8], 8, 50256)]
    optimizer = make_optimizer(OptimizerConfig(lr=0.02, schedule="cosine", total_steps=20, warmup_steps=3), prompt)
    config = LoopConfig(steps=20, eval_every=5, progress=False, seed=5)
    loss_fn = prompt_loss(model, method, common_prefix_length(examples))
    straight = fit(loss_fn, optimizer, prompt, frozen, batches, val, config, run_dir=str(tmp_path / "a"))

    class Killed(Exception):
        pass

    def dies_at_13(step):
        if step == 13:
            raise Killed
        return batches(step)

    with pytest.raises(Killed):
        fit(loss_fn, optimizer, prompt, frozen, dies_at_13, val, config, run_dir=str(tmp_path / "b"))
    resumed = fit(loss_fn, optimizer, prompt, frozen, batches, val, config, run_dir=str(tmp_path / "b"), resume=True)
    jax.tree.map(np.testing.assert_array_equal, straight.state.params, resumed.state.params)
    jax.tree.map(np.testing.assert_array_equal, straight.state.opt_state, resumed.state.opt_state)
    assert straight.best_val_loss == resumed.best_val_loss and straight.best_step == resumed.best_step
    assert [h for h in straight.history] == [h for h in resumed.history]
    # best and last k kept
    assert sorted(os.listdir(tmp_path / "b" / "last")) == ["10", "15", "20"]
    assert os.listdir(tmp_path / "b" / "best") == [str(straight.best_step)]


def test_early_stopping(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm
    examples = _examples(gpt2_tokenizer)
    # with a zero learning rate validation never improves after the first evaluation (step 2):
    # two more evaluations without a new best (steps 4, 6) stop the run
    _, result = _fit(model, frozen, make_method("soft", length=P), examples, steps=200, lr=0.0,
                     eval_every=2, patience=2)
    assert result.stopped_early and result.history[-1]["step"] == 6 and result.best_step == 2


def test_optimizer_partition_freezes_and_scales_parts(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm
    method = make_method("ptuning", length=P, hidden=16)
    prompt = method.init(jax.random.key(0), model, frozen, P)
    batch = Batches(_examples(gpt2_tokenizer), 8, 50256)(0)
    loss_fn = prompt_loss(model, method)
    for cfg in (OptimizerConfig(lr=0.01, frozen_parts=("inputs",)),
                OptimizerConfig(lr=0.01, part_lr=(("encoder", 0.0),))):
        optimizer = make_optimizer(cfg, prompt)
        step = jax.jit(make_train_step(loss_fn, optimizer))
        state, _ = step(TrainState.create(prompt, optimizer, jax.random.PRNGKey(0)), frozen, batch)
        still = "inputs" if cfg.frozen_parts else "encoder"
        moved = "encoder" if cfg.frozen_parts else "inputs"
        jax.tree.map(np.testing.assert_array_equal, state.params[still], prompt[still])
        assert not np.allclose(state.params[moved] if moved == "inputs" else jax.tree.leaves(state.params[moved])[0],
                               prompt[moved] if moved == "inputs" else jax.tree.leaves(prompt[moved])[0])
    with pytest.raises(ValueError, match="unknown prompt part"):
        make_optimizer(OptimizerConfig(frozen_parts=("embeddings",)), prompt)


def test_gradient_accumulation_matches_big_batch(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm
    method = make_method("soft", length=P)
    prompt = method.init(jax.random.key(0), model, frozen, P)
    examples = _examples(gpt2_tokenizer)
    from jaxprompt.data import collate
    loss_fn = prompt_loss(model, method)
    big = collate(examples[:8], 50256)
    halves = [collate(examples[:4], 50256), collate(examples[4:8], 50256)]
    sgd = OptimizerConfig(lr=0.1, optimizer="sgd", clip_norm=None)
    one = make_optimizer(sgd, prompt)
    two = make_optimizer(OptimizerConfig(lr=0.1, optimizer="sgd", clip_norm=None, accumulate=2), prompt)
    s1, _ = make_train_step(loss_fn, one)(TrainState.create(prompt, one, jax.random.PRNGKey(0)), frozen, big)
    s2 = TrainState.create(prompt, two, jax.random.PRNGKey(0))
    for h in halves:
        s2, _ = make_train_step(loss_fn, two)(s2, frozen, h)
    # each half has the same number of target tokens here, so the mean of means is the big mean
    np.testing.assert_allclose(s1.params["embeddings"], s2.params["embeddings"], atol=1e-6)


def test_multitask_batch_uses_each_examples_prompt(tiny_lm, gpt2_tokenizer):
    from jaxprompt.data import collate

    model, frozen = tiny_lm
    for name in ("soft", "prefix"):
        method = MultiTask(base=make_method(name, length=P), n_tasks=2)
        prompt = method.init(jax.random.key(0), model, frozen, P)
        ex0 = _examples(gpt2_tokenizer, pairs=ANTONYM_PAIRS[:3], task_id=0, method=method)
        ex1 = _examples(gpt2_tokenizer, pairs=ANTONYM_PAIRS[3:6], task_id=1, method=method)
        mixed = prompt_loss(model, method)(prompt, frozen, collate(ex0 + ex1, 50256), None, 0)
        alone = [prompt_loss(model, method.base)(method.task_prompt(prompt, t), frozen, collate(ex, 50256), None, 0)
                 for t, ex in ((0, ex0), (1, ex1))]
        np.testing.assert_allclose(mixed[0], alone[0][0] + alone[1][0], rtol=1e-5)
    # and it trains
    method = MultiTask(base=make_method("soft", length=P), n_tasks=2)
    examples = _examples(gpt2_tokenizer, pairs=ANTONYM_PAIRS[:8]) + _examples(gpt2_tokenizer, pairs=ANTONYM_PAIRS[8:], task_id=1)
    _, result = _fit(model, frozen, method, examples, steps=30, eval_every=30)
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]


def test_bf16_frozen_weights_fp32_prompt(tiny_lm, gpt2_tokenizer):
    from jaxprompt.precision import Policy

    model, frozen = tiny_lm
    frozen16 = Policy.of("bf16").cast_frozen(frozen)
    method = make_method("soft", length=P)
    prompt, result = _fit(model, frozen16, method, _examples(gpt2_tokenizer), steps=20)
    assert result.state.params["embeddings"].dtype == jnp.float32
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]


DP_SCRIPT = textwrap.dedent("""
    import sys, jax, numpy as np
    sys.path.insert(0, {tests!r})
    from conftest import ANTONYM_PAIRS, tiny_config
    from jaxprompt.data import Batches, Template, common_prefix_length, encode
    from jaxprompt.loss import prompt_loss
    from jaxprompt.models import Model
    from jaxprompt.optim import OptimizerConfig, make_optimizer
    from jaxprompt.prompts import make_method
    from jaxprompt.tokenizer import Tokenizer
    from jaxprompt.train import LoopConfig, fit
    assert jax.device_count() == 4
    tok = Tokenizer.load({tok!r})
    model = Model(tiny_config())
    frozen = model.init(jax.random.key(0), std=0.2)
    t = Template("Here are two {{prompt}} {{word1}} and", " {{word2}}")
    out = {{}}
    for n in (1, 2, 4):
        for name in ("soft", "prefix"):
            method = make_method(name, length=4)
            ex = [encode(t, {{"word1": a, "word2": b}}, tok, 4, virtual=name != "prefix") for a, b in ANTONYM_PAIRS]
            prompt = method.init(jax.random.key(1), model, frozen, 4)
            opt = make_optimizer(OptimizerConfig(lr=0.05), prompt)
            r = fit(prompt_loss(model, method, common_prefix_length(ex)), opt, prompt, frozen, Batches(ex, 8, 50256),
                    None, LoopConfig(steps=6, progress=False), devices=jax.devices()[:n])
            out[(n, name)] = np.concatenate([np.ravel(x) for x in jax.tree.leaves(r.state.params)])
    for name in ("soft", "prefix"):
        for n in (2, 4):
            np.testing.assert_allclose(out[(n, name)], out[(1, name)], atol=2e-6, rtol=1e-5)
            print(name, n, float(np.abs(out[(n, name)] - out[(1, name)]).max()))
    print("OK")
""")


def test_one_two_four_devices_give_the_same_prompt():
    from conftest import TOKENIZER_DIR

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    script = DP_SCRIPT.format(tests=str(REPO / "tests"), tok=str(TOKENIZER_DIR))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]


def test_corrupt_checkpoint_is_reported_and_left_in_place(tiny_lm, gpt2_tokenizer, tmp_path):
    from jaxprompt.checkpoint import CheckpointError, Checkpointer

    model, frozen = tiny_lm
    method = make_method("soft", length=P)
    prompt = method.init(jax.random.key(0), model, frozen, P)
    optimizer = make_optimizer(OptimizerConfig(lr=0.01), prompt)
    examples = _examples(gpt2_tokenizer)
    fit(prompt_loss(model, method), optimizer, prompt, frozen, Batches(examples, 8, 50256), None,
        LoopConfig(steps=2, progress=False), run_dir=str(tmp_path))
    state_dir = tmp_path / "last" / "2" / "state"
    files = [p for p in state_dir.rglob("*") if p.is_file()]
    for p in files:
        p.write_bytes(b"garbage")
    ckpt = Checkpointer(str(tmp_path))
    with pytest.raises(CheckpointError, match="last/2 .* cannot be read.*left in place"):
        ckpt.restore(TrainState.create(prompt, optimizer, jax.random.PRNGKey(0)))
    ckpt.close()
    assert all(p.exists() for p in files)
