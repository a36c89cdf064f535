"""Choice scoring throughput: jaxprompt's (each context once, every candidate from its keys/values)
against K full forward passes (context recomputed per candidate) and against lm-eval's own `hf`
backend on the same requests, in one process.

    python scripts/bench/bench_choices.py                          # embedded model, supersense, 64 questions
    python scripts/bench/bench_choices.py --model DIR --task antonym-choice --examples 256 --pairs 7

Timing is interleaved (A B A B ...) so drift in machine load hits both sides alike; each pair
gives a ratio (other's seconds / jaxprompt's), reported as the median with its range. Every side
runs once before timing (compilation, caches). The log-likelihoods of all three are checked to
agree before anything is timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from jaxprompt.data.choices import ChoiceExample, encode_choices
from jaxprompt.data.tasks import get_task  # noqa: E402
from jaxprompt.evaluation.choices import score  # noqa: E402
from jaxprompt.paths import DEFAULT_MODEL  # noqa: E402
from jaxprompt.prompts import METHODS  # noqa: E402
from jaxprompt.session import Session  # noqa: E402


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(ours, other, pairs: int) -> tuple[float, float, float, float]:
    """(median ratio, min, max, our median seconds) over `pairs` A B timings."""
    ratios, mine = [], []
    for _ in range(pairs):
        a = _seconds(ours)
        b = _seconds(other)
        ratios.append(b / a)
        mine.append(a)
    return statistics.median(ratios), min(ratios), max(ratios), statistics.median(mine)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory (with a transformers config)")
    p.add_argument("--task", default="supersense", help="a choice task (built-in or task file)")
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--pairs", type=int, default=5, help="interleaved A B timing pairs")
    p.add_argument("--no-lm-eval", action="store_true", help="skip the lm-eval hf comparison")
    args = p.parse_args(argv)

    task = get_task(args.task)
    if task.answer != "choice":
        p.error(f"--task {args.task}: not a choice task (answer = {task.answer!r})")
    rows = task.load()["test"][:args.examples]
    # the bare model on the task's written prompt: no learned prompt, so lm-eval's hf sees the same text
    session = Session.load(args.model, task, METHODS["soft"](length=1), cache=False)
    examples = encode_choices(session, rows, hard_prompt=task.hard_prompt)
    K = sum(len(e.candidates) for e in examples)
    singles = [ChoiceExample(e.context, [c], 0, [t]) for e in examples for c, t in zip(e.candidates, e.texts)]
    ours = lambda: score(session, None, examples, None, args.batch_size)
    full = lambda: score(session, None, singles, None, args.batch_size, share=False)
    reference = [ll for per in full()[0] for ll in per]
    mine = [ll for per in ours()[0] for ll in per]
    np.testing.assert_allclose(mine, reference, atol=1e-3)
    print(f"{args.task}: {len(examples)} questions, {K} candidates (mean {K / len(examples):.1f}), "
          f"batch {args.batch_size}, model {args.model}")
    ratio, low, high, seconds = interleaved(ours, full, args.pairs)
    print(f"jaxprompt choices   {K / seconds:10.1f} candidates/s")
    print(f"vs K full passes    {ratio:6.2f}x faster (median of {args.pairs} pairs, range {low:.2f}-{high:.2f})")

    if args.no_lm_eval:
        return 0
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from jaxprompt.evaluation.lm_eval import JaxPromptLM
    from jaxprompt.models.loading import resolve

    texts = [(task.template.render_hard(r, task.hard_prompt), c) for r in rows for c in task.candidates(r)]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(texts)]
    jp = JaxPromptLM(session, None, batch_size=args.batch_size, learned=False)
    hf = HFLM(pretrained=resolve(args.model), dtype="float32", device="cpu", batch_size=args.batch_size)
    a = [ll for ll, _ in jp.loglikelihood(requests, disable_tqdm=True)]
    b = [ll for ll, _ in hf.loglikelihood(requests, disable_tqdm=True)]
    np.testing.assert_allclose(a, b, atol=1e-3)
    ratio, low, high, seconds = interleaved(lambda: jp.loglikelihood(requests, disable_tqdm=True),
                                            lambda: hf.loglikelihood(requests, disable_tqdm=True), args.pairs)
    print(f"lm-eval requests    {len(requests) / seconds:10.1f} requests/s through jaxprompt's LM")
    print(f"vs lm-eval hf       {ratio:6.2f}x faster (median of {args.pairs} pairs, range {low:.2f}-{high:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
