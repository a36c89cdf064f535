"""What the serving benchmark and soak share: random PEFT adapters written to a directory, a
`jaxprompt serve` subprocess, clients that drive it, latency summaries, and the stamp a figure
carries (machine, commit, command)."""

from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
# this process (clients, writing adapters) keeps off the accelerator: the server gets all of it
_OURS = {"JAX_PLATFORMS": "cpu"} if "JAX_PLATFORMS" not in os.environ else {}
os.environ.update(_OURS)
TEXTS = ["hot and cold are", "The opposite of big is", "Words that mean the opposite: up and",
         "good", "A list of antonyms: fast, slow; early,", "night and"]
LENGTHS = {"soft": 8, "prefix": 8}  # virtual tokens of the random prompts


def write_adapters(model_dir: str, directory: str, k: int, kind: str, length: int | None = None,
                   first: int = 0) -> list[str]:
    """K PEFT adapters of `kind` (soft: prompt tuning, prefix: prefix tuning) with random prompts
    (seeds first..first+K-1, scaled away from the vocabulary so they change the output), written by
    `jaxprompt export`'s writer as p{i}."""
    import jax

    from jaxprompt.prompts import METHODS
    from jaxprompt.runs.export import export_peft
    from jaxprompt.serving.prompts import adapter_task
    from jaxprompt.session import Session

    method = METHODS[kind](length=length or LENGTHS[kind])
    session = Session.load(model_dir, adapter_task(), method, cache=False)
    paths = []
    for i in range(first, first + k):
        prompt = method.init(jax.random.key(i), session.model, session.frozen, session.n_virtual)
        paths.append(export_peft(os.path.join(directory, f"p{i}"), method, jax.tree.map(lambda x: 3.0 * x, prompt),
                                 session.model, session.frozen, session.task.template, base_model=model_dir))
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: str, flags: list[str], timeout: float = 1800.0):
    """`jaxprompt serve --model MODEL_DIR FLAGS` on a free port, once it answers /health: (process, base URL)."""
    import httpx

    port = free_port()
    args = [sys.executable, "-m", "jaxprompt", "serve", "--model", model_dir, "--port", str(port), *flags]
    path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))  # keep the caller's packages
    env = {k: v for k, v in os.environ.items() if k not in _OURS}
    proc = subprocess.Popen(args, env={**env, "PYTHONPATH": path}, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server did not start (exit {proc.returncode}): {' '.join(args)}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not answer /health in time")


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def completer(base: str, timeout: float = 600.0):
    """`send(model, text, max_tokens) -> completion tokens`: one raw greedy completion, over httpx."""
    import httpx

    client = httpx.Client(base_url=base, timeout=timeout, limits=httpx.Limits(max_connections=256))

    def send(model: str, text: str, n: int) -> int:
        r = client.post("/v1/completions", json={"model": model, "prompt": text, "max_tokens": n, "temperature": 0,
                                                 "raw": True})
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    return send


def drive(send, work: list[tuple], clients: int) -> dict:
    """`clients` threads working through `work`: requests/s, tokens/s, latency percentiles."""
    start = time.monotonic()
    latencies, tokens = _timed(send, work, clients)
    return summary(latencies, tokens, time.monotonic() - start)


def _timed(send, work: list[tuple], threads: int) -> tuple[list[float], list[int]]:
    """`threads` threads sending `work`: each request's latency and the tokens it generated."""
    latencies, tokens, lock = [], [], threading.Lock()

    def one(job):
        t = time.monotonic()
        n = send(*job)
        with lock:
            latencies.append(time.monotonic() - t)
            tokens.append(n)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, work))
    return latencies, tokens


def _share(base: str, work: list[tuple], threads: int, start: float) -> tuple[list, list, float]:
    """One client process's share: its latencies and tokens, and when its last request ended
    (`time.monotonic` is one clock for every process of the machine)."""
    send = completer(base)
    time.sleep(max(0.0, start - time.monotonic()))
    latencies, tokens = _timed(send, work, threads)
    return latencies, tokens, time.monotonic()


class ClientProcesses:
    """N clients spread over P processes, each with its own interpreter lock, as clients on other
    machines would be: 64 client threads in one Python process share one core's worth of
    interpreter, which a fast server (a GPU's) can outrun."""

    def __init__(self, base: str, processes: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.base, self.processes = base, processes
        self.pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))

    def __call__(self, work: list[tuple], clients: int) -> dict:
        start = time.monotonic() + 1.0  # every process waiting for the same start
        shares = [work[i::self.processes] for i in range(self.processes)]
        threads = max(1, clients // self.processes)
        done = [f.result() for f in [self.pool.submit(_share, self.base, share, threads, start) for share in shares]]
        return summary([x for d in done for x in d[0]], [x for d in done for x in d[1]],
                       max(d[2] for d in done) - start)

    def close(self) -> None:
        self.pool.shutdown()


def summary(latencies: list[float], tokens: list[int], wall: float) -> dict:
    ordered = sorted(latencies)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return {"rps": len(ordered) / wall, "tps": sum(tokens) / wall, "p50": statistics.median(ordered),
            "p95": at(0.95), "p99": at(0.99)}


def resident_kib(pid: int) -> int:
    """The process's resident memory (VmRSS), KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def metrics(base: str) -> dict[str, float]:
    """/metrics as {sample name (with labels): value}, read by Prometheus' own parser."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(httpx.get(base + "/metrics", timeout=60).text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def report(body: str, out: str) -> None:
    """Prints `body` under its stamp (machine, commit, command) and writes the same text to `out`."""
    text = f"{stamp()}\n\n{body}\n"
    print("\n" + text)
    with open(out, "w") as f:
        f.write(text)


def stamp() -> str:
    """Machine, commit and command of a figure (docs/benchmarks.md's header for it)."""
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30).stdout.split("\n")
        devices = ", ".join(sorted({g.strip() for g in gpus if g.strip()})) or "CPU"
    except (OSError, subprocess.SubprocessError):
        devices = "CPU"
    return (f"machine: {cpu}, {os.cpu_count()} cores; devices: {devices}\ncommit: {commit}\n"
            f"command: python {' '.join(sys.argv)}\ndate: {time.strftime('%Y-%m-%d %H:%M')}")
