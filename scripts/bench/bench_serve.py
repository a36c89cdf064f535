"""Serving K learned prompts to N concurrent clients (`jaxprompt serve --prompts DIR`).

Default (issue 35, "serve a thousand prompts"): K random prompts of one kind (soft prompts: PEFT
prompt tuning; prefixes: PEFT prefix tuning) written to a temporary directory and served on demand
by one server per kind (`--prompts DIR --max-resident R --warmup`). For each K (1, 64, 1000), the
first request of a cold prompt is timed (one at a time, the server otherwise idle: reading the
adapter, its inference form, its heads, and any program a new shape compiles), every prompt is then
touched once (loaded, resident), and for each client count (16, 64) the same number of raw greedy
requests of mixed input and output lengths, round-robin over the K prompts, is timed in `--rounds`
rounds: requests/s, generated tokens/s, p50/p95/p99 latency (queueing included), median over
rounds. The target: K = 1000 within 10% of K = 1's throughput once warm (the "of K=1" column).
The table is printed and written to --out with the machine, commit and command it came from.

    python scripts/bench/bench_serve.py                                  # K 1 64 1000, 16 and 64 clients
    python scripts/bench/bench_serve.py --client-processes 8             # the same on a GPU
    python scripts/bench/bench_serve.py --prompts 1 4 --clients 2 --requests 8 --rounds 1 --cold 2 \\
        --max-tokens 4 --kinds prefix                                    # a check, minutes on a CPU

`--versus`: the older comparison, K prefix adapters served mixed in one batch against one request
at a time (`--max-batch 1`) and against PyTorch PEFT switching adapters per request (`set_adapter`;
PEFT cannot mix prompt-learning adapters in a batch), interleaved rounds, median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servelib import TEXTS, ClientProcesses, completer, drive, report, start_server, stop, write_adapters  # noqa: E402


def jobs(k: int, n: int, max_tokens: int, offset: int = 0) -> list[tuple[str, str, int]]:
    """n requests, round-robin over prompts p0..p{k-1}, of mixed input and output lengths."""
    return [(f"p{(i + offset) % k}", TEXTS[i % len(TEXTS)], max(1, max_tokens >> (i % 3))) for i in range(n)]


def scale(args) -> None:
    rows = []
    for kind in args.kinds:
        with tempfile.TemporaryDirectory() as directory:
            start = time.perf_counter()
            write_adapters(args.model, directory, max(args.prompts), kind)
            print(f"{kind}: {max(args.prompts)} adapters written in {time.perf_counter() - start:.0f} s", flush=True)
            resident = args.max_resident or max(args.prompts)
            proc, base = start_server(args.model, ["--prompts", directory, "--max-resident", str(resident),
                                                   "--max-batch", str(args.max_batch), "--max-queue", "100000",
                                                   "--max-tokens", str(max(16, args.max_tokens)), "--warmup",
                                                   "--batch-wait-ms", str(args.batch_wait_ms)])
            send, touched = completer(base), 0
            timed = ClientProcesses(base, args.client_processes) if args.client_processes > 1 else partial(drive, send)
            try:
                for k in sorted(args.prompts):
                    cold = []
                    for i in range(touched, min(k, touched + args.cold)):  # untouched prompts: cold
                        t = time.monotonic()
                        send(f"p{i}", TEXTS[0], args.max_tokens)
                        cold.append(time.monotonic() - t)
                    drive(send, [(f"p{i}", TEXTS[0], 1) for i in range(k)], 16)  # every prompt resident
                    drive(send, jobs(k, args.requests, args.max_tokens), max(args.clients))  # this work's shapes
                    touched = max(touched, k)
                    for clients in args.clients:
                        rounds = [timed(jobs(k, args.requests, args.max_tokens, r), clients)
                                  for r in range(args.rounds)]
                        m = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
                        rows.append({"kind": kind, "k": k, "clients": clients, **m,
                                     "cold": statistics.median(cold) if cold else None})
                        print(_row(rows[-1], rows), flush=True)
            finally:
                if args.client_processes > 1:
                    timed.close()
                stop(proc)
    table = "\n".join([HEADER, *(_row(r, rows) for r in rows)])
    notes = (f"\n\n{args.requests} raw greedy requests per configuration and round (max_tokens {args.max_tokens} "
             f"and shorter, round-robin over the K prompts), median of {args.rounds} rounds; --max-batch "
             f"{args.max_batch}, --max-resident {args.max_resident or max(args.prompts)}; prompts of "
             f"{', '.join(args.kinds)} kind(s), 8 virtual tokens; cold: the first request of an untouched prompt, "
             f"one at a time (median of {args.cold}); model {args.model}.")
    report(f"{table}{notes}", args.out)
    print(f"written to {args.out}")


HEADER = ("| prompts | K | clients | requests/s | tokens/s | p50 (s) | p95 (s) | p99 (s) | cold first request (s) "
          "| tokens/s of K=1 |\n|---|---|---|---|---|---|---|---|---|---|")


def _row(r: dict, rows: list[dict]) -> str:
    one = next((x for x in rows if x["kind"] == r["kind"] and x["k"] == 1 and x["clients"] == r["clients"]), None)
    ratio = f"{r['tps'] / one['tps']:.2f}" if one else "-"
    cold = f"{r['cold']:.3f}" if r["cold"] is not None else "-"
    return (f"| {r['kind']} | {r['k']} | {r['clients']} | {r['rps']:.2f} | {r['tps']:.1f} | {r['p50']:.3f} | "
            f"{r['p95']:.3f} | {r['p99']:.3f} | {cold} | {ratio} |")


# ---- --versus: mixed batches against one at a time and PEFT ---------------------------------------

def peft_sender(model_dir: str, adapters: list[str]):
    """PEFT: one model, every adapter loaded, `set_adapter` per request; one request at a time."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # PEFT on the GPU where the servers have one
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapters[0], adapter_name="p0")
    for i, path in enumerate(adapters[1:], 1):
        model.load_adapter(path, adapter_name=f"p{i}")
    model.to(device).eval()
    lock = threading.Lock()

    def send(name, text, n):
        ids = tokenizer(text, return_tensors="pt").to(device)
        with lock, torch.no_grad():
            model.set_adapter(name)
            out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        return len(new[:new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new)

    return send


def versus(args) -> None:
    with tempfile.TemporaryDirectory() as directory:
        adapters = write_adapters(args.model, directory, max(args.prompts), "prefix")
        flags = ["--prompts", directory, "--max-queue", "100000", "--warmup"]
        servers = {"mixed batch": start_server(args.model, [*flags, "--max-batch", str(max(args.clients)),
                                                            "--batch-wait-ms", str(args.batch_wait_ms)]),
                   "one at a time": start_server(args.model, [*flags, "--max-batch", "1", "--batch-wait-ms", "0"])}
        try:
            runs = {name: partial(drive, completer(base)) for name, (_, base) in servers.items()}
            if not args.no_peft:
                runs["PEFT set_adapter"] = partial(drive, peft_sender(args.model, adapters))
            clients = max(args.clients)
            for k in args.prompts:  # untimed: this work's input lengths compiled, every adapter loaded
                for run in runs.values():
                    run(jobs(k, args.requests, args.max_tokens), clients)
            lines = ["| K prompts | server | requests/s | tokens/s | p50 (s) | p95 (s) | p99 (s) |",
                     "|---|---|---|---|---|---|---|"]
            for k in args.prompts:
                results = {name: [] for name in runs}
                for _ in range(args.rounds):  # interleaved: every configuration once per round
                    for name, run in runs.items():
                        results[name].append(run(jobs(k, args.requests, args.max_tokens), clients))
                for name, rounds in results.items():
                    m = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
                    lines.append(f"| {k} | {name} | {m['rps']:.2f} | {m['tps']:.1f} | {m['p50']:.3f} | "
                                 f"{m['p95']:.3f} | {m['p99']:.3f} |")
                    print(lines[-1], flush=True)
            report("\n".join(lines) + f"\n\n{clients} clients, {args.requests} requests per round, "
                   f"max_tokens {args.max_tokens} (mixed lengths), prefix length 8, median of {args.rounds} "
                   f"interleaved rounds; model {args.model}", args.out)
        finally:
            for proc, _ in servers.values():
                stop(proc)


def main() -> None:
    from jaxprompt.paths import DEFAULT_MODEL

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--prompts", type=int, nargs="+", default=[1, 64, 1000], help="K: prompts served (round-robin)")
    p.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    p.add_argument("--kinds", nargs="+", default=["soft", "prefix"], choices=["soft", "prefix"])
    p.add_argument("--requests", type=int, default=512, help="requests per configuration and round")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cold", type=int, default=16, help="cold prompts whose first request is timed, per K")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-resident", type=int, default=None, help="default: the largest K (all resident once warm)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--client-processes", type=int, default=1,
                   help="spread the timed clients over this many processes (on a GPU: one interpreter's 64 client "
                        "threads can be slower than the server)")
    p.add_argument("--out", default="bench_serve.md", help="where the table is written, with its stamp")
    p.add_argument("--versus", action="store_true", help="mixed batches against one at a time and PEFT")
    p.add_argument("--no-peft", action="store_true", help="--versus without the PEFT side")
    args = p.parse_args()
    (versus if args.versus else scale)(args)


if __name__ == "__main__":
    main()
