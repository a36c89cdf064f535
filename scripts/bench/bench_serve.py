"""Serving K learned prompts to N concurrent clients: `jaxprompt serve` mixing prompts in one batch,
against (a) the same server decoding one request at a time (`--max-batch 1`) and (b) PyTorch PEFT
switching adapters per request (`set_adapter`, one request at a time: PEFT cannot mix
prompt-learning adapters in a batch).

The prompts are K PEFT prefix-tuning adapters with random keys/values on the same model, written
here; the jaxprompt servers import the very same adapters (`--adapter`), and every request is raw
text (prefix prompts take no input positions, so both sides read the same tokens). Requests are
greedy, of mixed lengths. Both servers compile their batch sizes at start (`--warmup`), and one
untimed pass of the work per configuration compiles its input lengths, so the rounds time decoding,
not compilation (a program compiles in about 6 s on a 2-core CPU; `jaxprompt serve --warmup`
prints how many it compiled, and in how long). Configurations are timed in interleaved rounds
(mixed, one-at-a-time, PEFT, repeated), and each figure is the median over rounds: requests/s,
generated tokens/s, the p50/p95 latency a client sees (queueing included), and the CPU time the
server process spent per request. The clients are threads of this process, or of several
(`--client-processes`: on a GPU, 16 client threads in one interpreter can limit the mixed server).

    python scripts/bench/bench_serve.py --clients 16 --prompts 1 4 16 --requests 64 --rounds 3
    python scripts/bench/bench_serve.py --clients 16 --prompts 1 4 16 --requests 64 --rounds 2 --client-processes 4  # GPU
    python scripts/bench/bench_serve.py --clients 2 --prompts 1 --requests 4 --rounds 1 --max-tokens 4   # a check
    python scripts/bench/bench_serve.py --scheduler --prompts 1 16   # the scheduler alone, without HTTP
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
TEXTS = ["hot and cold are", "The opposite of big is", "Words that mean the opposite: up and",
         "good", "A list of antonyms: fast, slow; early,", "night and"]


def write_adapters(model_dir: str, k: int, length: int, directory: str) -> list[str]:
    """K PEFT prefix-tuning adapters with random keys/values (seed i), on `model_dir`."""
    import torch
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for i in range(k):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        peft = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=length))
        torch.manual_seed(i)
        with torch.no_grad():
            for p in peft.prompt_encoder.parameters():
                p.copy_(torch.randn_like(p) * 0.5)
        paths.append(os.path.join(directory, f"p{i}"))
        peft.save_pretrained(paths[-1])
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: str, adapters: list[str], max_batch: int, wait_ms: float):
    import httpx

    port = free_port()
    args = [sys.executable, "-m", "jaxprompt", "serve", "--model", model_dir, "--port", str(port),
            "--max-batch", str(max_batch), "--batch-wait-ms", str(wait_ms), "--max-queue", "100000", "--warmup"]
    for path in adapters:
        args += ["--adapter", path]
    path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))  # keep the caller's packages
    proc = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": path}, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("the server did not start")
        time.sleep(0.5)


def jobs(k: int, n: int, max_tokens: int) -> list[tuple[str, str, int]]:
    """n requests, round-robin over the K prompts, of mixed input and output lengths."""
    return [(f"p{i % k}", TEXTS[i % len(TEXTS)], max(1, max_tokens >> (i % 3))) for i in range(n)]


def drive(send, work, clients: int) -> dict:
    """N clients (threads) working through `work`; per-request latency, wall time, tokens."""
    start = time.monotonic()
    latencies, tokens, end = _client_share(send, work, clients, start)
    return _summary(len(work), latencies, tokens, end - start)


def _client_share(send, work, threads: int, start: float) -> tuple[list, list, float]:
    """`threads` clients working through `work` from time `start` (`time.monotonic`, the same
    clock in every process): per-request latencies and tokens, and when the last one ended."""
    if isinstance(send, str):  # a server's address: this process's own client of it
        send = _senders.setdefault(send, server_sender(send))
    time.sleep(max(0.0, start - time.monotonic()))
    latencies, tokens = [], []
    lock = threading.Lock()

    def one(job):
        t = time.monotonic()
        n = send(*job)
        with lock:
            latencies.append(time.monotonic() - t)
            tokens.append(n)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, work))
    return latencies, tokens, time.monotonic()


_senders: dict = {}  # in a client process: one openai client per server address


def _summary(n: int, latencies: list, tokens: list, wall: float) -> dict:
    latencies = sorted(latencies)
    return {"rps": n / wall, "tps": sum(tokens) / wall, "p50": statistics.median(latencies),
            "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]}


class ClientProcesses:
    """N clients spread over P processes, each with its own openai client and interpreter lock, as
    clients on other machines would be: 16 client threads in one Python process share one core's
    worth of interpreter, which a fast server can outrun."""

    def __init__(self, base: str, processes: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.base, self.processes = base, processes
        self.pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))

    def __call__(self, work, clients: int) -> dict:
        start = time.monotonic() + 0.5  # every process waiting for the same start
        shares = [work[i::self.processes] for i in range(self.processes)]
        threads = max(1, clients // self.processes)
        results = [f.result() for f in [self.pool.submit(_client_share, self.base, share, threads, start)
                                        for share in shares]]
        return _summary(len(work), [x for r in results for x in r[0]], [x for r in results for x in r[1]],
                        max(r[2] for r in results) - start)

    def close(self) -> None:
        self.pool.shutdown()


def process_seconds(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_sender(base: str):
    import openai

    client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)

    def send(name, text, n):
        r = client.completions.create(model=name, prompt=text, max_tokens=n, temperature=0, extra_body={"raw": True})
        return r.usage.completion_tokens

    return send


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


def decode_step_ms(scheduler, b: int, steps: int = 30) -> float:
    """Median wall time of the scheduler's decode step over b running rows (the bare model)."""
    from jaxprompt.inference.requests import Options, Request
    from jaxprompt.inference.slots import _step

    engine = scheduler.engine
    room = engine.config.max_positions - 16
    for _ in range(b):
        scheduler.submit(Request(engine.model_id, text=TEXTS[0], options=Options(max_tokens=room), raw=True))
    scheduler._admit()
    model, params = scheduler._params()
    eos, pad = engine.tokenizer.eos_token_id, scheduler._pad()
    slots, times = scheduler.slots, []
    for _ in range(steps):
        t = time.perf_counter()
        tokens, _, slots = _step(model, params, slots, eos, pad)
        tokens.block_until_ready()
        times.append(time.perf_counter() - t)
    scheduler.running.clear()
    scheduler.slots = None
    return 1e3 * statistics.median(times[1:])


def scheduler_alone(model_dir: str, adapters: list[str], ks: list[int], n: int, max_tokens: int, slots: int,
                    rounds: int) -> None:
    """The engine's scheduler without HTTP, in this process: `Scheduler.run` of the whole work
    (mixed in up to `slots` slots) against one request at a time, interleaved rounds."""
    from jaxprompt.inference.requests import Options, Request
    from jaxprompt.inference.scheduler import Scheduler
    from jaxprompt.serving.options import ServeOptions
    from jaxprompt.serving.prompts import load_engine

    engine, _ = load_engine([], [f"p{i}={path}" for i, path in enumerate(adapters)], ServeOptions(max_batch=slots))
    scheduler = Scheduler(engine, slots)
    start = time.perf_counter()
    print(f"warm-up: {scheduler.warm_up()} programs in {time.perf_counter() - start:.1f} s", flush=True)
    for b in (1, slots):  # what one decode step costs for b rows (slots kept full: rows never end)
        print(f"decode step at batch {b}: {decode_step_ms(scheduler, b):.2f} ms", flush=True)
    print("| K prompts | scheduler alone | requests/s | tokens/s |\n|---|---|---|---|")
    for k in ks:
        work = [Request(name, text=text, options=Options(max_tokens=m), raw=True) for name, text, m in jobs(k, n, max_tokens)]
        ways = {"mixed": lambda: scheduler.run(work), "one at a time": lambda: [scheduler.run([w])[0] for w in work]}
        for way in ways.values():  # this work's input lengths compiled
            way()
        results = {name: [] for name in ways}
        for _ in range(rounds):
            for name, way in ways.items():
                t = time.perf_counter()
                done = way()
                wall = time.perf_counter() - t
                results[name].append((len(work) / wall, sum(c.completion_tokens for c in done) / wall))
        for name, runs in results.items():
            print(f"| {k} | {name} | {statistics.median(r[0] for r in runs):.2f} | "
                  f"{statistics.median(r[1] for r in runs):.1f} |", flush=True)


def main() -> None:
    from jaxprompt.paths import DEFAULT_MODEL

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--prompts", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=64, help="requests per configuration and round")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--prefix-length", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--client-processes", type=int, default=1,
                   help="spread the clients over this many processes (each its own interpreter lock)")
    p.add_argument("--no-peft", action="store_true")
    p.add_argument("--scheduler", action="store_true",
                   help="time the engine's scheduler alone (no HTTP, no clients): mixed against one at a time")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        adapters = write_adapters(args.model, max(args.prompts), args.prefix_length, tmp)
        if args.scheduler:
            return scheduler_alone(args.model, adapters, args.prompts, args.requests, args.max_tokens,
                                   max(args.clients, 1), args.rounds)
        mixed = start_server(args.model, adapters, max(args.clients, 1), args.batch_wait_ms)
        single = start_server(args.model, adapters, 1, 0.0)
        clients = []
        try:
            runs = {}  # name -> (work, clients -> figures; server process or None)
            for name, (proc, base) in (("mixed batch", mixed), ("one at a time", single)):
                if args.client_processes > 1:
                    clients.append(ClientProcesses(base, args.client_processes))
                    runs[name] = (clients[-1], proc)
                else:
                    runs[name] = (partial(drive, server_sender(base)), proc)
            if not args.no_peft:
                runs["PEFT set_adapter"] = (partial(drive, peft_sender(args.model, adapters)), None)
            for k in args.prompts:  # beyond the servers' own warm-up: this work's input lengths, every adapter
                for run, _ in runs.values():
                    run(jobs(k, args.requests, args.max_tokens), args.clients)
            print("| K prompts | server | requests/s | tokens/s | p50 latency (s) | p95 latency (s) | "
                  "server CPU (ms/request) |")
            print("|---|---|---|---|---|---|---|")
            for k in args.prompts:
                work = jobs(k, args.requests, args.max_tokens)
                results = {name: [] for name in runs}
                for _ in range(args.rounds):  # interleaved: every configuration once per round
                    for name, (run, proc) in runs.items():
                        cpu = process_seconds(proc.pid) if proc else None
                        figures = run(work, args.clients)
                        if proc:
                            figures["cpu"] = 1e3 * (process_seconds(proc.pid) - cpu) / len(work)
                        results[name].append(figures)
                for name, rounds in results.items():
                    m = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
                    cpu = f"{m['cpu']:.2f}" if "cpu" in m else "-"
                    print(f"| {k} | {name} | {m['rps']:.2f} | {m['tps']:.1f} | {m['p50']:.3f} | {m['p95']:.3f} | "
                          f"{cpu} |", flush=True)
            print(f"\n{args.clients} clients in {args.client_processes} process(es), {args.requests} requests per "
                  f"round, max_tokens {args.max_tokens} (mixed lengths), prefix length {args.prefix_length}, median "
                  f"of {args.rounds} interleaved rounds; model {args.model}")
        finally:
            for c in clients:
                c.close()
            for proc, _ in (mixed, single):
                proc.terminate()
                proc.wait()


if __name__ == "__main__":
    main()
