"""Evaluation: the inference form is what is scored, BLEU/ROUGE-L and exact match against
transformers' own generations, and no sequence past the position table."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import ANTONYM_PAIRS

from jaxprompt.data.tasks import BUILTIN, Task
from jaxprompt.data.templates import Template, TemplateError
from jaxprompt.evaluation.evaluate import evaluate, generate_texts, heldout_loss, shown_samples
from jaxprompt.prompts import METHODS, MultiTask
from jaxprompt.session import Session

ROWS = [{"word1": a, "word2": b} for a, b in ANTONYM_PAIRS]


def test_a_relaxed_prompt_is_scored_at_its_final_temperature(tiny_lm, gpt2_tokenizer):
    """What evaluation reports for a relaxed prompt is the soft prompt it ends training as."""
    model, frozen = tiny_lm
    relaxed = METHODS["relaxed"](length=4, tau_end=0.05, anneal_steps=100)
    prompt = relaxed.init(jax.random.key(0), model, frozen, 4)
    prompt = {"logits": prompt["logits"] + 2.0 * jax.random.normal(jax.random.key(1), prompt["logits"].shape)}
    session = Session(model, frozen, gpt2_tokenizer, BUILTIN["antonyms"], relaxed)
    logits = np.asarray(prompt["logits"], np.float64) / 0.05
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    final = (weights / weights.sum(-1, keepdims=True)) @ np.asarray(model.embedding_table(frozen), np.float64)
    soft = METHODS["soft"](length=4)
    as_soft = Session(model, frozen, gpt2_tokenizer, BUILTIN["antonyms"], soft)
    reported = heldout_loss(session, prompt, ROWS)
    np.testing.assert_allclose(reported, heldout_loss(as_soft, {"embeddings": final.astype(np.float32)}, ROWS),
                               rtol=1e-5)
    at_start = {"embeddings": relaxed.virtual_tokens(prompt, model, frozen, 0)}  # tau = 1, what was scored before
    assert abs(reported - heldout_loss(as_soft, at_start, ROWS)) > 0.05
    assert generate_texts(session, prompt, ROWS[:4], max_new_tokens=3) == \
        generate_texts(as_soft, {"embeddings": final.astype(np.float32)}, ROWS[:4], max_new_tokens=3)


def test_generation_past_the_position_table_is_refused(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm  # 96 positions
    session = Session(model, frozen, gpt2_tokenizer, BUILTIN["antonyms"], METHODS["soft"](length=4))
    prompt = session.method.init(jax.random.key(0), model, frozen, 4)
    with pytest.raises(TemplateError, match=r"input of 9 tokens \+ 300 new tokens needs 309 positions; "
                                            r"the model has 96"):
        generate_texts(session, prompt, ROWS[:2], max_new_tokens=300)


def test_a_multi_task_prompt_is_evaluated_one_task_at_a_time(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm
    method = MultiTask(base=METHODS["soft"](length=4), n_tasks=2)
    session = Session(model, frozen, gpt2_tokenizer, BUILTIN["antonyms"], method,
                      tasks=(BUILTIN["antonyms"], BUILTIN["antonyms"]))
    prompt = method.init(jax.random.key(0), model, frozen, 4)
    with pytest.raises(ValueError, match="one task of a multi-task prompt at a time"):
        evaluate(session, prompt, ROWS[:2])
    single, task_prompt = session.task_session(1, prompt)
    assert single.method == method.base and task_prompt["embeddings"].shape == (4, 32)
    np.testing.assert_array_equal(task_prompt["embeddings"], prompt["embeddings"][1])


REWRITE = Task(name="rewrite", template=Template("{prompt} {sentence} Paraphrase:", " {paraphrase}"),
               hard_prompt="Rewrite the sentence.", answer="text", max_new_tokens=6, data="unused")
SENTENCES = ["the weather is hot today", "she sold the old car", "we walked home early", "a big dog barked"]


def test_text_metrics_against_transformers_generations(tiny_model_dir, gpt2_tokenizer):
    """References set to what transformers generates greedily for the same inputs: exact match 1,
    BLEU 100, ROUGE-L 1. Shifted references: exact match 0, and sacrebleu's / rouge_score's own
    figures on those strings."""
    torch = pytest.importorskip("torch")
    import sacrebleu
    from rouge_score import rouge_scorer
    from transformers import AutoModelForCausalLM

    session = Session.load(tiny_model_dir, REWRITE, METHODS["soft"](length=4), cache=False)
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    answers = []
    for s in SENTENCES:
        ids = torch.tensor([gpt2_tokenizer.encode(REWRITE.template.render_hard({"sentence": s, "paraphrase": ""},
                                                                     REWRITE.hard_prompt))])
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                              eos_token_id=50256, pad_token_id=50256)[0, ids.shape[1]:].tolist()
        if 50256 in out:
            out = out[:out.index(50256)]
        answers.append(gpt2_tokenizer.decode(out).strip().split("\n")[0].strip())
    assert len(set(answers)) > 1 and all(answers), answers

    rows = [{"sentence": s, "paraphrase": a} for s, a in zip(SENTENCES, answers)]
    matched = evaluate(session, None, rows, hard_prompt=REWRITE.hard_prompt)
    assert matched.exact_match == 1.0 and matched.rouge_l == pytest.approx(1.0)
    assert matched.bleu == pytest.approx(100.0)

    shifted = answers[1:] + answers[:1]
    rows = [{"sentence": s, "paraphrase": a} for s, a in zip(SENTENCES, shifted)]
    result = evaluate(session, None, rows, hard_prompt=REWRITE.hard_prompt)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    assert result.exact_match == 0.0
    assert result.bleu == pytest.approx(sacrebleu.corpus_bleu(answers, [shifted]).score)
    assert result.rouge_l == pytest.approx(np.mean([scorer.score(r, p)["rougeL"].fmeasure
                                                    for r, p in zip(shifted, answers)]))


def test_the_sample_table_shows_a_few_hits_before_the_misses():
    scored = [(f"k{i}", f"p{i}", hit) for i, hit in enumerate([False, False, True, False, True, True, True, False])]
    shown = shown_samples(scored, 6)
    assert [k for k, _, _ in shown] == ["k2", "k4", "k5", "k0", "k1", "k3"]  # 3 hits, then misses in order
    assert [k for k, _, _ in shown_samples(scored, 10)] == ["k2", "k4", "k5", "k0", "k1", "k3", "k7", "k6"]
    only_hits = [(k, p, True) for k, p, _ in scored]
    assert shown_samples(only_hits, 4) == only_hits[:4]
    only_misses = [(k, p, False) for k, p, _ in scored]
    assert shown_samples(only_misses, 4) == only_misses[:4]
