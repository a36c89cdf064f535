"""Choice scoring (choices.py): every candidate's log-likelihood from the context's keys/values
against transformers' full forward passes in float64, `--loss choices` gradients against PyTorch
autograd in float64, accuracy / acc_norm / per-class counts, and bad choice tasks in one line."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ANTONYM_PAIRS

from jaxprompt.data.choices import ChoiceBatches, collate_choices, encode_choices
from jaxprompt.data.tasks import Task
from jaxprompt.data.templates import Template, TemplateError
from jaxprompt.evaluation.choices import choice_cross_entropy, choice_logprobs, choice_loss, choice_metrics
from jaxprompt.evaluation.evaluate import evaluate
from jaxprompt.prompts import METHODS
from jaxprompt.session import Session

torch = pytest.importorskip("torch")

# per-example candidates: the antonym among words of the pairs (lengths differ: some take 2+ tokens)
WORDS = [b for _, b in ANTONYM_PAIRS] + ["unbelievably cold", "antidisestablishment"]
PAIRWISE = Task(name="pick", template=Template("{prompt} {word1} is the opposite of", " {word2}"),
                answer="choice", choices_field="options", data="unused")
ROWS = [{"word1": a, "word2": b, "options": [b] + [w for w in WORDS if w != b][-1 - i % 3:][:1 + i % 3]}
        for i, (a, b) in enumerate(ANTONYM_PAIRS[:7])]
FIXED = Task(name="polarity", template=Template("{prompt} Is {word1} the opposite of {word2}? Answer:", " {label}"),
             answer="choice", choices=(" yes", " no", " maybe"), hard_prompt="Answer yes or no.", data="unused")
FIXED_ROWS = [{"word1": a, "word2": b if i % 2 else WORDS[(i + 3) % 16], "label": "yes" if i % 2 else "no"}
              for i, (a, b) in enumerate(ANTONYM_PAIRS)]


def _session(tiny_hf, variant, task, method):
    pt_model, directory = tiny_hf(variant)
    session = Session.load(directory, task, method, cache=False)
    prompt = method.init(jax.random.key(0), session.model, session.frozen, session.n_virtual)
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(prompt))))
    prompt = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape, x.dtype), prompt)
    return session, prompt, pt_model.double()


def _torch_logliks(pt_model, session, prompt, examples, requires_grad=False):
    """Per example, each candidate's summed log-probability from one full float64 forward pass over
    [context with the prompt's embeddings in its slots | candidate] (no cache, nothing reused)."""
    table = pt_model.get_input_embeddings().weight
    virtual = torch.tensor(np.asarray(prompt["embeddings"], np.float64), requires_grad=requires_grad)
    out = []
    for e in examples:
        per = []
        for cand in e.candidates:
            tokens = e.context.tokens + cand
            embeds = table[torch.tensor(tokens)].clone()
            for t, s in enumerate(e.context.slots):
                if s >= 0:
                    embeds[t] = virtual[s]
            logits = pt_model(inputs_embeds=embeds[None]).logits[0]
            logp = torch.log_softmax(logits, -1)
            n = len(e.context.tokens)
            per.append(sum(logp[n - 1 + j, c] for j, c in enumerate(cand)))
        out.append(torch.stack(per))
    return out, virtual


@pytest.mark.parametrize("variant", ["gpt2-50k", "llama-50k"])
def test_candidates_scored_from_the_contexts_keys_values_match_full_forward_passes(tiny_hf, variant):
    session, prompt, pt_model = _session(tiny_hf, variant, PAIRWISE, METHODS["soft"](length=4))
    examples = encode_choices(session, ROWS)
    assert len({len(c) for e in examples for c in e.candidates}) > 1  # candidates of different lengths
    assert len({len(e.candidates) for e in examples}) > 1  # and examples with different numbers of them
    theirs, _ = _torch_logliks(pt_model, session, prompt, examples)
    for shared in (0, session.shared_len([e.context for e in examples])):
        batch = {k: jnp.asarray(v) for k, v in collate_choices(examples, session.pad_id, shared_len=shared).items()}
        ours, greedy = choice_logprobs(session.model, session.frozen, session.method, prompt, batch, 0)
        for b, e in enumerate(examples):
            K = len(e.candidates)
            np.testing.assert_allclose(np.asarray(ours[b, :K]), theirs[b].detach().numpy(), atol=2e-4, rtol=1e-5)
            assert np.all(np.asarray(ours[b, K:]) < -1e29)  # padding candidates never win
            assert not np.any(np.asarray(greedy[b, K:]))


def test_choice_loss_gradient_matches_pytorch_autograd_in_float64(tiny_hf):
    session, prompt, pt_model = _session(tiny_hf, "gpt2-50k", PAIRWISE, METHODS["soft"](length=4))
    examples = encode_choices(session, ROWS[:5])
    shared = session.shared_len([e.context for e in examples])
    batch = {k: jnp.asarray(v) for k, v in collate_choices(examples, session.pad_id, 8, shared).items()}
    loss_fn = choice_loss(session.model, session.method)
    (total, count), grads = jax.value_and_grad(loss_fn, has_aux=True)(prompt, session.frozen, batch,
                                                                      jax.random.key(0), 0)
    assert float(count) == 5  # the three padding rows weigh nothing
    logliks, virtual = _torch_logliks(pt_model, session, prompt, examples, requires_grad=True)
    reference = sum(torch.logsumexp(ll, 0) - ll[e.gold] for ll, e in zip(logliks, examples))
    reference.backward()
    np.testing.assert_allclose(float(total), reference.item(), rtol=1e-5)
    expected = virtual.grad.numpy()
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(np.asarray(grads["embeddings"]), expected, atol=1e-5 * np.abs(expected).max() * 10,
                               rtol=1e-3)


def test_cross_entropy_ignores_padding_candidates():
    loglik = jnp.asarray([[-1.0, -2.0, -1e30], [-3.0, -1.0, -0.5]])
    total, count = choice_cross_entropy(loglik, jnp.asarray([0, 2]), jnp.asarray([1.0, 1.0]))
    expected = (np.logaddexp(-1, -2) + 1) + (np.log(np.exp([-3, -1, -0.5]).sum()) + 0.5)
    np.testing.assert_allclose(float(total), expected, rtol=1e-6)
    assert float(count) == 2


def test_evaluation_reports_accuracy_acc_norm_and_per_class_counts(tiny_hf):
    session, prompt, pt_model = _session(tiny_hf, "gpt2-50k", FIXED, METHODS["soft"](length=4))
    learned = evaluate(session, prompt, FIXED_ROWS)
    examples = encode_choices(session, FIXED_ROWS)
    theirs = [ll.detach().numpy() for ll in _torch_logliks(pt_model, session, prompt, examples)[0]]
    golds = [e.gold for e in examples]
    predicted = [int(np.argmax(ll)) for ll in theirs]
    lengths = np.asarray([len(c.encode()) for c in FIXED.choices])
    assert learned.accuracy == pytest.approx(np.mean([p == g for p, g in zip(predicted, golds)]))
    assert learned.acc_norm == pytest.approx(np.mean([int(np.argmax(ll / lengths)) == g
                                                      for ll, g in zip(theirs, golds)]))
    for k, c in enumerate(FIXED.choices):
        assert learned.per_class[c] == {"gold": golds.count(k), "predicted": predicted.count(k),
                                        "correct": sum(p == g == k for p, g in zip(predicted, golds))}
    assert learned.exact_match is None and learned.loss > 0
    # the sample table: up to 3 hits first, then the misses (evaluate.shown_samples), with transformers' predictions
    hits = [i for i, (p, g) in enumerate(zip(predicted, golds)) if p == g]
    misses = [i for i, (p, g) in enumerate(zip(predicted, golds)) if p != g]
    shown = (hits[:3] + misses + hits[3:])[:10]
    assert [s["predicted"] for s in learned.samples] == [FIXED.choices[predicted[i]].strip() for i in shown]
    assert [s["match"] for s in learned.samples] == [predicted[i] == golds[i] for i in shown]
    written = evaluate(session, None, FIXED_ROWS, hard_prompt=FIXED.hard_prompt)
    assert written.accuracy is not None and written.per_class is not None


def test_acc_norm_divides_by_bytes_not_tokens():
    class E:  # the longer candidate has the lower total but the higher likelihood per byte
        gold, texts, candidates = 1, [" a", " abcdéfgh"], [[1], [2]]

    metrics = choice_metrics([E()], [[-1.0, -1.5]], (" a", " abcdéfgh"))
    assert metrics.accuracy == 0.0 and metrics.acc_norm == 1.0
    # " abcdéfgh" is 10 bytes, 9 characters: per byte it wins (-0.0475 > -0.05), per character it would not
    metrics = choice_metrics([E()], [[-0.1, -0.475]], (" a", " abcdéfgh"))
    assert metrics.accuracy == 0.0 and metrics.acc_norm == 1.0


def test_choice_batches_are_deterministic_and_pad_to_the_batch(gpt2_tokenizer, tiny_lm):
    model, frozen = tiny_lm
    session = Session(model, frozen, gpt2_tokenizer, PAIRWISE, METHODS["soft"](length=4))
    examples = encode_choices(session, ROWS)
    batches = ChoiceBatches(examples, 4, session.pad_id, seed=3)
    a, b = batches(5), batches(5)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["choice_tokens"].shape[:2] == (4, max(len(r["options"]) for r in ROWS))


@pytest.mark.parametrize("change,message", [
    ({"word2": "nothing"}, "the gold answer ' nothing' is not among the candidates"),
    ({"options": []}, "field 'options' must hold a non-empty list of candidates"),
    ({"word2": 9}, "gold index 9 is outside the 3 candidates"),
])
def test_bad_choice_rows_are_refused_in_one_line(change, message):
    row = {"word1": "hot", "word2": "cold", "options": ["cold", "warm", "big"], **change}
    with pytest.raises(TemplateError, match=message) as e:
        PAIRWISE.with_gold(row)
    assert "\n" not in str(e.value)


def test_a_gold_index_names_the_option():
    row = PAIRWISE.with_gold({"word1": "hot", "word2": 1, "options": ["warm", "cold"]})
    assert row["word2"] == "cold" and PAIRWISE.gold_index(row) == 1


def test_a_candidate_that_tokenizes_to_nothing_is_refused(gpt2_tokenizer, tiny_lm):
    model, frozen = tiny_lm
    task = Task(name="empty", template=Template("{prompt} {word1}?", "{label}"), answer="choice",
                choices=("", " no"), data="unused")
    session = Session(model, frozen, gpt2_tokenizer, task, METHODS["soft"](length=4))
    with pytest.raises(TemplateError, match="the candidate '' tokenizes to nothing"):
        encode_choices(session, [{"word1": "hot", "label": ""}])


@pytest.mark.parametrize("keys,message", [
    ({"answer": "choice"}, "needs exactly one of 'choices'"),
    ({"answer": "choice", "choices": (" a",), "choices_field": "x"}, "needs exactly one of 'choices'"),
    ({"answer": "word", "choices": (" a",)}, "need answer = \"choice\""),
    ({"answer": "choice", "choices": (" a", " a")}, "repeats a candidate"),
])
def test_bad_choice_task_keys_are_refused(keys, message):
    with pytest.raises(TemplateError, match=message):
        Task(name="t", template=Template("{prompt} {x}", " {y}"), data="unused", **keys)


@pytest.mark.slow
def test_loss_choices_raises_validation_accuracy_on_supersense(tmp_path):
    """`train --task supersense --loss choices` with the embedded model: the learned prompt ranks the
    gold category first more often on validation than the prompt it started from."""
    from jaxprompt.config import RunOptions, TrainConfig
    from jaxprompt.data.tasks import BUILTIN
    from jaxprompt.runs.load import load_run
    from jaxprompt.training.run import train_prompt

    config = TrainConfig.from_flags(tasks=("supersense",), loss="choices", prompt_length=4, steps=40, batch_size=16,
                                    lr=0.1, eval_every=20, eval_examples=64, baseline=False)
    out = str(tmp_path / "run")
    train_prompt(config, RunOptions(out=out, progress=False, cache=False), log=lambda *a: None)
    session, learned, _ = load_run(out, cache=False)
    rows = BUILTIN["supersense"].load(seed=0)["validation"][:64]
    start = session.method.init(jax.random.key(0), session.model, session.frozen, session.n_virtual)
    before = evaluate(session, start, rows).accuracy
    after = evaluate(session, learned, rows).accuracy
    assert after >= before + 0.1, (before, after)
    results = json.load(open(f"{out}/results.json"))["results"][0]
    assert results["accuracy"] is not None and results["acc_norm"] is not None


@pytest.mark.parametrize("rows,keys,message", [
    ([{"w": "hot", "label": "warm"}], {"choices": [" yes", " no"]}, "the gold answer ' warm' is not among the "
                                                                    "candidates [' yes', ' no']"),
    ([{"w": "hot", "label": "cold", "options": []}], {"choices_field": "options"},
     "field 'options' must hold a non-empty list of candidates"),
    ([{"w": "hot", "label": "yes"}], {"choices": [" yes", " no"], "loss": None}, "--loss choices needs choice tasks"),
])
def test_bad_choice_input_is_one_line_and_exit_2(tmp_path, capsys, rows, keys, message):
    from conftest import write_task

    from jaxprompt.cli.main import main

    keys = dict(keys)
    plain = keys.pop("loss", "x") is None
    task = write_task(tmp_path, rows * 20, template="{prompt} {w}?", target=" {label}", name="bad",
                      **({} if plain else {"answer": "choice", **keys}))
    code = main(["train", "--task", task, "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress",
                 *(["--loss", "choices"])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err, err
    assert not (tmp_path / "run").exists()
