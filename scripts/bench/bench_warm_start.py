"""Warm starts: time to the first step of `jaxprompt train`, `eval` and `generate`, cold (empty
caches) against warm (a second identical command, reading the compiled programs and prompt heads
the first one kept; compile_cache.py).

Each command runs as a new process, as a user runs it, with its own jaxprompt cache directory
(XDG_CACHE_HOME) so nothing of another trial is read:

- train: from launch to the first training entry in metrics.jsonl (`--log-every 1`): loading,
  the step-0 validation, and the first training step, with their compilations; the process is
  then stopped;
- eval: the whole command on `--examples` test rows (scoring and greedy generation);
- generate: the whole command on one input.

Trial order alternates cold and warm with a fresh cache directory per cold run; the medians of
`--repeats` trials are reported.

    python scripts/bench/bench_warm_start.py                  # the embedded model, 3 repeats
    python scripts/bench/bench_warm_start.py --repeats 1 --model /path/to/tiny   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import load_average


def _env(cache_home: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JAX_COMPILATION_CACHE") and k != "JAXPROMPT_CACHE"}
    env["XDG_CACHE_HOME"] = cache_home
    return env


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "jaxprompt", *args]


def time_to_first_step(train_args: list[str], out: str, cache_home: str, timeout: float) -> float:
    """Seconds from launch to the first training entry of metrics.jsonl; then stops the run.
    `out` must not exist: a previous trial's metrics would read as this one's first step."""
    if os.path.exists(out):
        raise ValueError(f"{out} exists: each trial trains into a new directory")
    metrics = os.path.join(out, "metrics.jsonl")
    t0 = time.perf_counter()
    proc = subprocess.Popen(_command(["train", *train_args, "--out", out, "--log-every", "1", "--no-progress"]),
                            env=_env(cache_home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None and not _has_train_entry(metrics):
                raise SystemExit(f"train ended before its first step:\n{proc.stderr.read()[-2000:]}")
            if _has_train_entry(metrics):
                return time.perf_counter() - t0
            time.sleep(0.05)
        raise SystemExit(f"train took more than {timeout} s to its first step")
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()


def _has_train_entry(metrics: str) -> bool:
    try:
        with open(metrics) as f:
            return any("train_loss" in json.loads(line) for line in f if line.strip())
    except (OSError, ValueError):
        return False


def whole_command(args: list[str], cache_home: str, timeout: float) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(_command(args), env=_env(cache_home), capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise SystemExit(f"{' '.join(args[:1])} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model of the trained run (default: the embedded model)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--examples", type=int, default=32, help="eval: test rows")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds one command may take")
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="jaxprompt-warm-start-")
    model = ["--model", args.model] if args.model else []
    train_args = [*model, "--steps", "2", "--eval-examples", "32", "--eval-every", "2"]
    # the run eval and generate load: trained once, with caches of its own (not part of any timing)
    run = os.path.join(work, "run")
    whole_command(["train", *train_args, "--out", run, "--no-progress"], os.path.join(work, "setup-cache"),
                  args.timeout)
    commands = {
        "train": lambda home: time_to_first_step(
            train_args, os.path.join(tempfile.mkdtemp(dir=work, prefix="timed-run-"), "run"), home, args.timeout),
        "eval": lambda home: whole_command(["eval", run, "--examples", str(args.examples)], home, args.timeout),
        "generate": lambda home: whole_command(["generate", run, "--text", "hot"], home, args.timeout),
    }
    print(f"load average before: {load_average()}")
    rows = []
    for name, timed in commands.items():
        cold, warm = [], []
        for trial in range(args.repeats):
            home = os.path.join(work, f"cache-{name}-{trial}")  # empty: a cold start
            cold.append(timed(home))
            warm.append(timed(home))  # the same cache directory: a warm start
        rows.append((name, statistics.median(cold), statistics.median(warm)))
    print(f"{'command':<10} {'cold (s)':>9} {'warm (s)':>9} {'warm/cold':>9}")
    for name, cold, warm in rows:
        print(f"{name:<10} {cold:>9.1f} {warm:>9.1f} {warm / cold:>9.2f}")
    print(f"(median of {args.repeats}; train: launch to its first training step; eval ({args.examples} rows) and "
          f"generate (one input): the whole command; load average after: {load_average()})")


if __name__ == "__main__":
    main()
