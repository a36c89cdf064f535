"""What the per-step stop check costs: the training loop's step time with `preemption.reached` asked
at every step (as it is) and with it replaced by a constant, on the embedded model.

One process (the check reads a flag), or each of several processes of one run (the check takes a
lock and asks JAX's preemption sync point; no collective either way):

    python scripts/bench/bench_stop_check.py
    python scripts/bench/bench_stop_check.py --coordinator 127.0.0.1:7777 --num-processes 2 --process-id 0  # and 1

Rounds alternate (with, without, with, ...) so drift in machine load hits both alike; each round is
one `fit` of `--steps` steps whose speed is read from its training entries after the first (the
first includes compilation). Prints the median tokens/s of each side, the median of the paired
rounds' ratios (with its range), and the check's own time per call beside a step's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from jaxprompt.parallel import distributed, preemption  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--coordinator")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    args = p.parse_args()
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)

    import jax

    from jaxprompt.config import LoopConfig, OptimizerConfig
    from jaxprompt.data.batches import Batches
    from jaxprompt.data.tasks import get_task
    from jaxprompt.parallel.strategies import DataParallel
    from jaxprompt.paths import DEFAULT_MODEL
    from jaxprompt.prompts import make_method
    from jaxprompt.prompts.loss import prompt_loss
    from jaxprompt.session import Session
    from jaxprompt.training.loop import fit
    from jaxprompt.training.optim import make_optimizer

    task = get_task("antonyms")
    method = make_method("soft", length=20)
    session = Session.load(DEFAULT_MODEL, task, method, cache=False)
    examples = session.encode(task.load(seed=0)["train"][:256])
    prompt = method.init(jax.random.key(0), session.model, session.frozen, session.n_virtual)
    optimizer = make_optimizer(OptimizerConfig(), prompt)
    batches = Batches(examples, args.batch_size, session.pad_id)
    step_tokens = statistics.mean(int(batches(s)["mask"].sum()) for s in range(20))  # what tokens/s counts
    strategy = DataParallel(distributed.run_devices())
    checked, constant = preemption.reached, (lambda counter: False)
    speeds: dict[str, list[float]] = {"with the check": [], "without": []}
    for r in range(2 * args.rounds):
        side = "with the check" if r % 2 == 0 else "without"
        preemption.reached = checked if side == "with the check" else constant
        seen = []
        fit(prompt_loss(session.model, method), optimizer, prompt, session.frozen, batches, None,
            LoopConfig(steps=args.steps, eval_every=args.steps, log_every=args.steps // 10), strategy=strategy,
            on_record=lambda entry, seen=seen: seen.append(entry["tokens_per_s"]))
        if seen:  # process 0's (the others record nothing)
            speeds[side].append(statistics.median(seen[1:]))
    preemption.reached = checked
    calls = 100_000
    start = time.perf_counter()
    for i in range(calls):
        preemption.reached(i + 1)
    per_call = (time.perf_counter() - start) / calls
    if distributed.is_writer():
        ratios = sorted(a / b for a, b in zip(speeds["with the check"], speeds["without"]))
        for side, values in speeds.items():
            print(f"{side:>16}: {statistics.median(values):9.0f} tokens/s (rounds: "
                  f"{', '.join(f'{v:.0f}' for v in values)})")
        print(f"{'ratio':>16}: {statistics.median(ratios):.3f} (median of {len(ratios)} paired rounds, range "
              f"{ratios[0]:.3f}..{ratios[-1]:.3f}); {jax.process_count()} process(es), {len(strategy.devices)} "
              f"device(s), batch {args.batch_size}")
        step = step_tokens / statistics.median(speeds["without"])
        print(f"{'the check alone':>16}: {per_call * 1e6:.2f} us per call, against a step of {step * 1e3:.1f} ms")

if __name__ == "__main__":
    main()
