"""The embedded default model: loads in `transformers` with the same logits, reads plain WordNet
English it was never shown, knows the antonym pairs its corpus showed and not those it held out,
and a learned prompt draws out antonym knowledge that pretraining put there."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from jaxprompt.paths import DEFAULT_MODEL

# the exact-match check: test rows scored, and the bar the embedded model was pretrained for (the
# main job's target, 30%; measured with this shorter training: 45.0%, jaxprompt and transformers alike)
EM_ROWS = 200
EM_BAR = 0.30
# the main job's training, shorter (the main job: 300 steps at 0.3): the one learned prompt every
# test of this file reads, and the training a randomly initialised model gets as the control
SHORT_JOB = dict(steps=80, prompt_length=20, lr=0.5, batch_size=32, eval_examples=200, eval_every=80)

pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(DEFAULT_MODEL, "model.safetensors")),
                                reason="embedded model not built (scripts/tools/pretrain_tiny.py)")


@pytest.fixture(scope="module")
def hf_model():
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    """A soft prompt trained as the main job trains it (`SHORT_JOB`), with the written prompt's
    figures beside it: the run's result."""
    from jaxprompt.config import RunOptions, TrainConfig
    from jaxprompt.training.run import train_prompt

    out = tmp_path_factory.mktemp("embedded") / "learned"
    return train_prompt(TrainConfig.from_flags(**SHORT_JOB), RunOptions(out=str(out), progress=False),
                        log=lambda *a: None)


@pytest.fixture(scope="module")
def test_pairs():
    """The antonyms task's test rows, split into pairs seen and unseen in pretraining."""
    from jaxprompt.data.tasks import get_task

    heldout = _heldout_pairs()
    test = get_task("antonyms").load(seed=0)["test"]
    unseen = [r for r in test if (r["word1"], r["word2"]) in heldout]
    seen = [r for r in test if (r["word1"], r["word2"]) not in heldout][:len(unseen)]
    return seen, unseen


def test_embedded_checkpoint_is_a_standard_hf_gpt2(hf_model):
    import torch

    from jaxprompt.data.tokenizer import Tokenizer
    from jaxprompt.models import Model
    from jaxprompt.models.loading import load_pretrained

    assert os.path.getsize(os.path.join(DEFAULT_MODEL, "model.safetensors")) < 40e6
    tokenizer = Tokenizer.load(DEFAULT_MODEL)
    ids = tokenizer.encode("The opposite of hot is cold. Here are two antonyms big and")
    assert ids[:3] == [464, 6697, 286]
    config, params = load_pretrained(DEFAULT_MODEL)
    ours = np.asarray(Model(config).logits(params, np.array([ids])))
    with torch.no_grad():
        ref = hf_model(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_plain_english_of_synsets_the_corpus_left_out(hf_model, hf_tokenizer):
    """Per-token LM loss of the held-out synsets' gloss-like sentences, computed by `transformers`:
    under 6 nats, and the figure pretraining.json reports."""
    import torch

    with open(os.path.join(DEFAULT_MODEL, "heldout_gloss.txt")) as f:
        sentences = f.read().splitlines()
    eos = hf_tokenizer.eos_token_id
    # each read after an EOS; batches of similar lengths, so little padding
    rows = sorted(([eos] + hf_tokenizer(s).input_ids for s in sentences), key=len)
    total, count = 0.0, 0
    for start in range(0, len(rows), 64):
        batch = rows[start:start + 64]
        width = max(map(len, batch))
        tokens = torch.tensor([r + [eos] * (width - len(r)) for r in batch])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch])
        labels = torch.tensor([r[1:] + [-100] * (width - len(r)) for r in batch])
        with torch.no_grad():  # the LM head only where a next token is scored
            hidden = hf_model.transformer(tokens, attention_mask=mask).last_hidden_state[:, :-1]
            scored = labels != -100
            logits = hf_model.lm_head(hidden[scored])
        total += float(torch.nn.functional.cross_entropy(logits, labels[scored], reduction="sum"))
        count += int(scored.sum())
    loss = total / count
    report = json.load(open(os.path.join(DEFAULT_MODEL, "pretraining.json")))
    assert loss < 6.0, loss
    assert abs(loss - report["heldout_gloss_loss"]) < 0.01, (loss, report["heldout_gloss_loss"])


def test_knows_the_pairs_it_was_shown_better_than_the_held_out_ones(hf_model, hf_tokenizer):
    """Rank of the answer's first token after "The opposite of X is" (a corpus phrasing), computed by
    `transformers` over every held-out pair and as many pairs of the antonyms data the corpus kept."""
    import random

    import torch

    from jaxprompt.data.tasks import get_task

    heldout = _heldout_pairs()
    every_pair = sorted({(r["word1"], r["word2"]) for rows in get_task("antonyms").load(seed=0).values() for r in rows})
    seen = random.Random(0).sample([q for q in every_pair if q not in heldout], len(heldout))

    def top_k_shares(pairs) -> tuple[float, float]:
        ranks = []
        for start in range(0, len(pairs), 128):
            chunk = pairs[start:start + 128]
            rows = [hf_tokenizer(f"The opposite of {a} is").input_ids for a, _ in chunk]
            width = max(map(len, rows))
            tokens = torch.tensor([r + [0] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            with torch.no_grad():
                logits = hf_model(tokens, attention_mask=mask).logits
            last = logits[torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])]
            answer = torch.tensor([hf_tokenizer(" " + b).input_ids[0] for _, b in chunk])
            ranks += (last > last.gather(1, answer[:, None])).sum(1).tolist()
        ranks = np.array(ranks)
        return float(np.mean(ranks < 1)), float(np.mean(ranks < 10))

    (seen_top1, seen_top10), (unseen_top1, unseen_top10) = top_k_shares(seen), top_k_shares(sorted(heldout))
    print(f"seen top-1 {seen_top1:.3f} top-10 {seen_top10:.3f}; unseen top-1 {unseen_top1:.3f} top-10 {unseen_top10:.3f}")
    # the figures pretraining.json reports for the held-out pairs (the same 974 pairs)
    report = json.load(open(os.path.join(DEFAULT_MODEL, "pretraining.json")))["probe_unseen"]
    assert abs(unseen_top1 - report["top1"]) < 2 / len(heldout) and abs(unseen_top10 - report["top10"]) < 2 / len(heldout)
    # measured: seen 97% in the top 10, unseen 19% (the model pretrained before 2026-12-03: 23% and
    # 11%). 974 pairs each: one standard error of the difference is 1.7 points, so 6 points is 3.5 of them
    assert seen_top10 > unseen_top10 + 0.06, (seen_top10, unseen_top10)


def _heldout_pairs() -> set[tuple[str, str]]:
    from corpus import read_heldout_pairs

    return set(read_heldout_pairs(DEFAULT_MODEL))


def test_learned_prompt_beats_written_prompt_and_needs_pretraining(tmp_path, learned_run, test_pairs):
    """A learned prompt lowers the test loss below the written one's, more on pairs the corpus showed
    than on held-out ones (it draws on what pretraining put there); on a randomly initialised model
    of the same shape the same training finds nothing."""
    from jaxprompt.config import RunOptions, TrainConfig
    from jaxprompt.data.tokenizer import Tokenizer
    from jaxprompt.evaluation.evaluate import heldout_loss
    from jaxprompt.models import Model
    from jaxprompt.models.convert import save_pretrained
    from jaxprompt.models.loading import load_pretrained
    from jaxprompt.runs.load import load_run
    from jaxprompt.training.run import train_prompt

    written, learned = learned_run.results
    # the main job's figures for this model are in the README
    assert learned.loss < written.loss - 0.25, (written.summary(), learned.summary())
    assert learned.exact_match >= written.exact_match, (written.summary(), learned.summary())

    session, prompt, _ = load_run(learned_run.run_dir)
    gain, loss = {}, {}
    for name, rows in zip(("seen", "unseen"), test_pairs):
        loss[name] = heldout_loss(session, prompt, rows)
        gain[name] = heldout_loss(session, None, rows, hard_prompt=session.task.hard_prompt) - loss[name]
    print("learned loss", loss, "gain over the written prompt", gain)
    # measured: seen 0.92 nats (0.99 below the written prompt), unseen 7.42 (0.29 above it)
    assert loss["unseen"] > loss["seen"] + 2.0 and gain["seen"] > gain["unseen"] + 0.2, (loss, gain)

    # a randomly initialised model of the same shape, prompt-tuned the same way
    model_config, _ = load_pretrained(DEFAULT_MODEL)
    random_dir = str(tmp_path / "random-model")
    save_pretrained(model_config, Model(model_config).init(jax.random.key(0)), random_dir)
    Tokenizer.load(DEFAULT_MODEL).save(random_dir)
    config = TrainConfig.from_flags(**SHORT_JOB, model=random_dir, baseline=False)
    (random,) = train_prompt(config, RunOptions(out=str(tmp_path / "random"), progress=False),
                             log=lambda *a: None).results
    assert random.loss > learned.loss + 3.0 and random.exact_match == 0, (random.summary(), learned.summary())


def test_exact_match_of_a_learned_prompt_recomputed_by_transformers(learned_run, hf_model, hf_tokenizer):
    """The headline figure, recomputed: the soft prompt trained as the main job trains it (shorter),
    then every test input's greedy continuation generated by `transformers` from the prompted input
    embeddings (HF adds the positions and runs the model); its exact match equals jaxprompt's and
    clears the bar the embedded model was pretrained for."""
    import torch

    from jaxprompt.data.batches import collate
    from jaxprompt.data.tasks import get_task
    from jaxprompt.evaluation.evaluate import answer_of, evaluate, inference_form
    from jaxprompt.prompts.forward import prompt_inputs
    from jaxprompt.runs.load import load_run

    session, prompt, _ = load_run(learned_run.run_dir)
    rows = get_task("antonyms").load(seed=0)["test"][:EM_ROWS]
    ours = evaluate(session, prompt, rows)
    method, serving = inference_form(session, prompt)
    references = {}  # as evaluation counts it: any test antonym of the same word
    for r in rows:
        references.setdefault(r["word1"], set()).add(answer_of(" " + r["word2"], "word"))
    hits = []
    for row, encoded in zip(rows, session.encode(rows, with_target=False, new_tokens=6)):
        batch = collate([encoded], session.pad_id, padding="left", buckets=(len(encoded),))
        embeds = prompt_inputs(session.model, session.frozen, method, serving, batch).embeds
        with torch.no_grad():
            new = hf_model.generate(inputs_embeds=torch.tensor(np.asarray(embeds, np.float32)),
                                    attention_mask=torch.ones(1, len(encoded), dtype=torch.long), max_new_tokens=6,
                                    do_sample=False, pad_token_id=hf_tokenizer.eos_token_id)
        text = hf_tokenizer.decode(new[0], skip_special_tokens=True)
        hits.append(answer_of(text, "word") in references[row["word1"]])
    theirs = float(np.mean(hits))
    print(f"exact match on {len(rows)} test pairs: jaxprompt {ours.exact_match:.3f}, transformers {theirs:.3f}")
    assert abs(theirs - ours.exact_match) <= 2 / len(rows), (theirs, ours.exact_match)
    assert theirs >= EM_BAR, theirs
