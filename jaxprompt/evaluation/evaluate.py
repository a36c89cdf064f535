"""Evaluation of a learned (or written) prompt: test loss, exact match of greedy generation,
BLEU / ROUGE-L for generative tasks, accuracy by likelihood for choice tasks (evaluation/choices.py), and a
table of predictions vs references."""

from __future__ import annotations

import re
from collections import defaultdict
from functools import partial

import jax
import numpy as np

from jaxprompt.data.batches import eval_batches
from jaxprompt.evaluation.results import EvalResult
from jaxprompt.inference.engine import Engine
from jaxprompt.inference.requests import Request
from jaxprompt.inference.sampling import Sampling
from jaxprompt.prompts.forward import prompted_hidden
from jaxprompt.prompts.loss import target_nll
from jaxprompt.session import Session


def inference_form(session: Session, prompt, hard_prompt: str | None = None):
    """(method, prompt) as scored and generated: the method's inference form, or (None, None) for a
    written prompt (its text is in the tokens)."""
    if hard_prompt is not None:
        return None, None
    return session.method.inference_prompt(prompt, session.model, session.frozen)


@partial(jax.jit, static_argnames=("model", "method"))
def _loss_batch(model, method, frozen, prompt, batch, head):
    return target_nll(model, frozen, prompted_hidden(model, frozen, method, prompt, batch, 0, head), batch)


def heldout_loss(session: Session, prompt, rows: list[dict], hard_prompt: str | None = None, batch_size: int = 32,
                 share: bool = True) -> float:
    """Mean target-token NLL (nats) over `rows`, of the prompt's inference form. The shared head is
    computed once (prompt cache)."""
    encoded = session.encode(rows, hard_prompt=hard_prompt)
    method, prompt = inference_form(session, prompt, hard_prompt)
    S, head = session.shared_head(encoded, method, prompt, share)
    total, count = 0.0, 0.0
    for _, batch in eval_batches(encoded, batch_size, session.pad_id, shared_len=S):
        s, c = _loss_batch(session.model, method, session.frozen, prompt, batch, head)
        total, count = total + float(s), count + float(c)
    return total / max(count, 1.0)


def generate_texts(session: Session, prompt, rows: list[dict], hard_prompt: str | None = None,
                   batch_size: int = 32, max_new_tokens: int | None = None, share: bool = True) -> list[str]:
    """Greedy continuations of each row's input (the template without its target), by the inference
    engine: the head every input shares is computed once (prompt cache) and attended by every row."""
    n_new = session.task.max_new_tokens if max_new_tokens is None else max_new_tokens
    engine = Engine.of_session(session, max_batch=batch_size)
    engine.share_heads = share
    engine.add("evaluated", session, prompt if hard_prompt is None else None, hard_prompt=hard_prompt)
    requests = [Request("evaluated", row=r, sampling=Sampling(max_tokens=n_new)) for r in rows]
    return [c.text for c in engine.complete(requests)]


def answer_of(text: str, answer: str) -> str:
    """The part of a generation that is compared with the reference."""
    text = text.strip()
    if answer == "word":
        words = re.findall(r"[\w'-]+", text)
        return words[0].lower() if words else ""
    return text.split("\n")[0].strip()


def evaluate(session: Session, prompt, rows: list[dict], hard_prompt: str | None = None, label: str = "",
             batch_size: int = 32, n_samples: int = 10, generation: bool = True) -> EvalResult:
    """Loss, exact match (any reference of the same input counts), and BLEU/ROUGE-L for text answers,
    of one task (a multi-task prompt: evaluate `session.task_session(i, prompt)` per task)."""
    if session.method.n_tasks > 1 and hard_prompt is None:
        raise ValueError("evaluate one task of a multi-task prompt at a time: session.task_session(i, prompt)")
    task = session.task
    result = EvalResult(label=label or ("written" if hard_prompt is not None else "learned"), n=len(rows),
                        loss=heldout_loss(session, prompt, rows, hard_prompt, batch_size))
    if not rows:
        return result
    if task.answer == "choice":
        return _evaluate_choices(session, prompt, rows, hard_prompt, result, batch_size, n_samples)
    if not generation:
        return result
    # one generation per distinct input; every target of that input is a reference
    references: dict[str, list[str]] = defaultdict(list)
    firsts: dict[str, dict] = {}
    for r in rows:
        key = task.template.render_hard(r, "\x00")
        references[key].append(answer_of(task.template.render_target(r), task.answer))
        firsts.setdefault(key, r)
    keys = list(firsts)
    texts = generate_texts(session, prompt, [firsts[k] for k in keys], hard_prompt, batch_size)
    predictions = [answer_of(t, task.answer) for t in texts]
    norm = lambda s: s.strip().lower()
    hits = [norm(p) in {norm(r) for r in references[k]} for p, k in zip(predictions, keys)]
    result.exact_match = float(np.mean(hits))
    if task.answer == "text":
        import sacrebleu
        from rouge_score import rouge_scorer

        first_refs = [references[k][0] for k in keys]
        result.bleu = float(sacrebleu.corpus_bleu(predictions, [first_refs]).score)
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        result.rouge_l = float(np.mean([scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(first_refs, predictions)]))
    fields = [f for f in task.fields if f not in task.template.target_fields]
    for k, p, hit in shown_samples(list(zip(keys, predictions, hits)), n_samples):
        result.samples.append({"input": " ".join(str(firsts[k][f]) for f in fields), "actual": " | ".join(references[k]),
                               "predicted": p, "match": bool(hit)})
    return result


def shown_samples(scored: list[tuple], n: int, hits_first: int = 3) -> list[tuple]:
    """`n` of the (key, prediction, hit) rows to show: up to `hits_first` hits, then the misses, then
    more hits if misses run short, each in the rows' order. A table of only misses (or only hits)
    hides what the other side looks like."""
    hits = [s for s in scored if s[2]]
    misses = [s for s in scored if not s[2]]
    shown = hits[:hits_first] + misses
    return (shown + hits[hits_first:])[:n]


def _evaluate_choices(session: Session, prompt, rows: list[dict], hard_prompt: str | None, result: EvalResult,
                      batch_size: int, n_samples: int) -> EvalResult:
    """Accuracy and acc_norm of the most likely candidate, per-class counts, the sample table."""
    from jaxprompt.data.choices import encode_choices
    from jaxprompt.evaluation.choices import choice_metrics, score

    task = session.task
    examples = encode_choices(session, rows, hard_prompt)
    method, prompt = inference_form(session, prompt, hard_prompt)
    logliks, _ = score(session, prompt, examples, method, batch_size)
    metrics = choice_metrics(examples, logliks, task.choices)
    result.accuracy, result.acc_norm, result.per_class = metrics.accuracy, metrics.acc_norm, metrics.per_class
    fields = [f for f in task.fields if f not in task.template.target_fields]
    scored = [(i, p, p == e.gold) for i, (e, p) in enumerate(zip(examples, metrics.predictions))]
    for i, p, hit in shown_samples(scored, n_samples):
        r, e = rows[i], examples[i]
        result.samples.append({"input": " ".join(str(r[f]) for f in fields), "actual": e.texts[e.gold].strip(),
                               "predicted": e.texts[p].strip(), "match": bool(hit)})
    return result


def evaluate_prompts(session: Session, rows_per_task: list[list[dict]], prompts: list, label: str = "learned",
                     baseline: bool = True) -> list[list[EvalResult]]:
    """Per prompt (one, or a population's members), its results on the rows of every task, each
    task's written prompt first (with `baseline`). The written prompt is scored once: every
    member has the same rows, so it has the same numbers."""
    per_prompt: list[list[EvalResult]] = [[] for _ in prompts]
    for i, rows in enumerate(rows_per_task):
        single, _ = session.task_session(i, prompts[0])
        name = f"{single.task.name}: " if len(rows_per_task) > 1 else ""
        if baseline and single.task.hard_prompt:
            written = evaluate(single, None, rows, hard_prompt=single.task.hard_prompt,
                               label=f"{name}written: {single.task.hard_prompt!r}")
            for results in per_prompt:
                results.append(written)
        for results, prompt in zip(per_prompt, prompts):
            single, task_prompt = session.task_session(i, prompt)
            results.append(evaluate(single, task_prompt, rows, label=f"{name}{label}"))
    return per_prompt
