"""The masked loss and its prompt gradient: against the textbook loss, float64 finite differences,
PEFT (PyTorch), and the unshared / non-rematerialised computation."""

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
from conftest import ANTONYM_PAIRS, REPO, TOKENIZER_DIR

from jaxprompt.data.batches import Batches, collate
from jaxprompt.data.templates import Encoded, Template, common_prefix_length, encode
from jaxprompt.models import Model
from jaxprompt.prompts import METHODS, SoftPrompt
from jaxprompt.prompts.forward import prompted_hidden
from jaxprompt.prompts.loss import prompt_loss

TEMPLATE = Template("Here are two {prompt} {word1} and", " {word2}")
P = 4


def _examples(tokenizer, pairs=ANTONYM_PAIRS, method=None):
    return [encode(TEMPLATE, {"word1": a, "word2": b}, tokenizer, method or SoftPrompt(length=P)) for a, b in pairs]


def test_gathered_loss_equals_full_masked_loss(tiny_lm, gpt2_tokenizer):
    """Logits at target positions only == the textbook loss over all positions with loss_mask."""
    model, frozen = tiny_lm
    batch = collate(_examples(gpt2_tokenizer, [("hot", "cold"), ("rich", "poor"), ("aphelion", "perihelion")]), 50256)
    method = METHODS["soft"](length=P)
    prompt = method.init(jax.random.key(0), model, frozen, P)
    logits = model.unembed(frozen, prompted_hidden(model, frozen, method, prompt, batch))
    # the textbook masked cross-entropy over every position, in float64 numpy
    logits = np.asarray(logits[:, :-1], np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    nll = -np.take_along_axis(logp, np.asarray(batch["tokens"][:, 1:])[..., None], axis=-1)[..., 0]
    mask = np.asarray(batch["loss_mask"][:, 1:])
    full = ((nll * mask).sum(), mask.sum())
    ours = prompt_loss(model, method)(prompt, frozen, batch, None, 0)
    np.testing.assert_allclose(ours, full, rtol=1e-6)


def test_left_and_right_padding_give_the_same_loss(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm
    for name in ("soft", "prefix"):
        method = METHODS[name](length=P)
        examples = _examples(gpt2_tokenizer, method=method)[:5]
        prompt = method.init(jax.random.key(0), model, frozen, P)
        losses = [prompt_loss(model, method)(prompt, frozen, collate(examples, 50256, side), None, 0)
                  for side in ("left", "right")]
        np.testing.assert_allclose(losses[0][0], losses[1][0], rtol=1e-5)


SHARED_CASES = [("gpt2", "soft", {}), ("gpt2", "prefix", {}), ("gpt2", "ptuning", {"hidden": 16}),
                ("gpt2", "adaption", {"top_layers": 1}), ("llama", "prefix", {}), ("gemma2", "soft", {}),
                ("gemma2", "adaption", {})]


@pytest.mark.parametrize("family,name,options", SHARED_CASES, ids=[f"{f}-{n}" for f, n, _ in SHARED_CASES])
def test_shared_prefix_equals_unshared(tiny_lms, gpt2_tokenizer, family, name, options):
    """Computing the prompt + fixed text once at batch size 1 gives the same loss and gradient (for
    adaption prompts the head is computed with the adapters too)."""
    model, frozen = tiny_lms(family)
    method = METHODS[name](length=P, **options)
    examples = _examples(gpt2_tokenizer, method=method)
    prompt = method.init(jax.random.key(0), model, frozen, P)
    if name == "adaption":  # gates off zero, or the adapters would not show
        prompt = {**prompt, "gate": prompt["gate"] + 0.5}
    S = common_prefix_length(examples)
    assert S == len(gpt2_tokenizer.encode("Here are two")) + (P if method.takes_positions else 0)
    value_grad = lambda s: jax.jit(jax.value_and_grad(lambda p, f, b: prompt_loss(model, method)(p, f, b, None, 0)[0]))(
        prompt, frozen, Batches(examples, 8, 50256, shared_len=s)(0))
    (l0, g0), (l1, g1) = value_grad(0), value_grad(S)
    np.testing.assert_allclose(l0, l1, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g0, g1)


def test_inference_loss_scores_the_inference_form(tiny_lm, gpt2_tokenizer):
    """`inference=True` is the loss of the baked prompt, not of the step's training form."""
    model, frozen = tiny_lm
    method = METHODS["relaxed"](length=P, tau_end=0.05, anneal_steps=100)
    prompt = method.init(jax.random.key(0), model, frozen, P)
    batch = collate(_examples(gpt2_tokenizer)[:6], 50256)
    baked_method, baked = method.inference_prompt(prompt, model, frozen)
    inference = prompt_loss(model, method, inference=True)(prompt, frozen, batch, None, 0)
    np.testing.assert_allclose(inference, prompt_loss(model, baked_method)(baked, frozen, batch, None, 0), rtol=1e-6)
    at_step_0 = prompt_loss(model, method)(prompt, frozen, batch, None, 0)
    assert abs(float(inference[0] - at_step_0[0])) > 1e-3


# Finite differences need float64 end to end; the precision policy pins float32 in layer norms,
# attention softmax, logits and the loss, so a fresh process aliases float32 to float64 first.
# Central differences at h and h/2 combined (Richardson) leave an O(h^4) error. Measured worst
# relative errors over 3 random directions: 1e-11 (soft, p-tuning), 4e-10 (prefix, multi-task),
# 7e-8 (relaxed).
FD_SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp
    jnp.float32 = jnp.float64
    import numpy as np
    sys.path.insert(0, {tests!r})
    from conftest import ANTONYM_PAIRS, tiny_config
    from jaxprompt.data.batches import Batches
    from jaxprompt.data.templates import Template, encode
    from jaxprompt.data.tokenizer import Tokenizer
    from jaxprompt.models import Model
    from jaxprompt.prompts import MultiTask, METHODS
    from jaxprompt.prompts.loss import prompt_loss
    tok = Tokenizer.load({tok!r})
    model = Model(tiny_config())
    frozen = jax.tree.map(lambda x: x.astype(jnp.float64), model.init(jax.random.key(0), std=0.2))
    t = Template("Here are two {{prompt}} {{word1}} and", " {{word2}}")
    # (method, step h): the p-tuning encoder's ReLUs make its loss piecewise smooth, so its steps stay
    # small enough not to cross a kink; the relaxed prompt's tiny derivatives want a larger step
    cases = [(METHODS["soft"](length=4), 1e-3), (METHODS["ptuning"](length=4, hidden=16), 1e-3),
             (METHODS["prefix"](length=4, reparam_hidden=16), 1e-3),
             (METHODS["relaxed"](length=4, anneal_steps=10), 1e-2),
             (MultiTask(base=METHODS["prefix"](length=4), n_tasks=2), 1e-3)]
    worst = {{}}
    for method, h in cases:
        ex = [encode(t, {{"word1": a, "word2": b}}, tok, method, task_id=i % 2)
              for i, (a, b) in enumerate(ANTONYM_PAIRS[:6])]
        batch = {{k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in Batches(ex, 6, 50256)(0).items()}}
        prompt = method.init(jax.random.key(1), model, frozen, 4)
        loss = jax.jit(lambda p, frozen, batch: prompt_loss(model, method)(p, frozen, batch, None, 3)[0])
        f = lambda p: loss(p, frozen, batch)
        assert "f32" not in str(jax.make_jaxpr(f)(prompt)), "float32 left in the computation"
        grads = jax.jit(jax.grad(loss))(prompt, frozen, batch)
        for d in range(3):
            keys = iter(jax.random.split(jax.random.key(10 + d), 100))
            direction = jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape, jnp.float64), prompt)
            norm = jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree.leaves(direction)))
            direction = jax.tree.map(lambda x: x / norm, direction)
            shift = lambda s: jax.tree.map(lambda p, v: p + s * v, prompt, direction)
            central = lambda h: (f(shift(h)) - f(shift(-h))) / (2 * h)
            numeric = (4 * central(h / 2) - central(h)) / 3  # Richardson: the h^2 error cancels
            analytic = sum(jnp.vdot(g, v) for g, v in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
            error = abs(float(numeric - analytic)) / abs(float(analytic))
            worst[method.name] = max(worst.get(method.name, 0.0), error)
            assert error < 1e-6, (method.name, d, float(numeric), float(analytic), error)
    print("OK worst relative error", worst)
""")


def test_prompt_gradients_match_float64_finite_differences():
    env = {**os.environ, "JAX_ENABLE_X64": "1", "JAX_PLATFORMS": "cpu"}
    script = FD_SCRIPT.format(tests=str(REPO / "tests"), tok=str(TOKENIZER_DIR))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]


@pytest.mark.parametrize("variant", ["gpt2", "llama"])
def test_prompt_gradient_matches_peft(tiny_hf, variant):
    """Loss and prompt gradient equal PEFT prompt tuning on the same tiny model (PyTorch)."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from jaxprompt.models.loading import load_pretrained

    pt_model, directory = tiny_hf(variant)
    config, frozen = load_pretrained(directory)
    model = Model(config)
    method = METHODS["soft"](length=5)
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
    np.testing.assert_allclose(float(loss), out.loss.item(), rtol=1e-6)
    ours, theirs = np.asarray(grad["embeddings"], np.float64), embedding.weight.grad.numpy().astype(np.float64)
    # relative to the gradient's norm (an absolute tolerance says nothing of small gradients);
    # measured 9.3e-7, both sides in float32
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 1e-5


def test_remat_same_gradient_less_memory():
    from conftest import tiny_config

    config = tiny_config(n_layers=4, d_model=64, n_heads=4, d_ff=256, d_embed=64, max_positions=512)
    plain, remat = Model(config), Model(config, remat=True)
    frozen = plain.init(jax.random.key(0))
    method = METHODS["soft"](length=8)
    prompt = method.init(jax.random.key(1), plain, frozen, 8)
    rng = np.random.RandomState(0)
    batch = collate([Encoded([0] * 8 + list(rng.randint(0, 50000, 500)), list(range(8)) + [-1] * 500, 4)
                     for _ in range(4)], 0)

    def grad_fn(model):
        return jax.jit(jax.grad(lambda p, f, b: prompt_loss(model, method)(p, f, b, None, 0)[0]))

    g0, g1 = grad_fn(plain)(prompt, frozen, batch), grad_fn(remat)(prompt, frozen, batch)
    np.testing.assert_allclose(g0["embeddings"], g1["embeddings"], rtol=1e-4, atol=1e-6)
    temp = lambda model: grad_fn(model).lower(prompt, frozen, batch).compile().memory_analysis().temp_size_in_bytes
    assert temp(remat) < 0.7 * temp(plain), (temp(remat), temp(plain))
