"""A soak of `jaxprompt serve --prompts DIR` (not a timed test): N minutes (default 20) of 32
clients over 1,000 prompts (random soft and prefix adapters), with greedy, sampled and streamed
requests, random disconnects (a stream dropped after its first chunk, a request abandoned by a
short client timeout), malformed requests, and prompts loaded (POST /v1/prompts) and unloaded
(DELETE) while serving. `--max-resident` below K keeps prompts moving between device and host.

Checks, each printed PASS or FAIL (exit code 1 on any FAIL):
  - no response is a 5xx (every malformed request a 4xx);
  - every slot free at the end: /metrics says no request running or waiting, no row in a slot;
  - the server's resident memory (VmRSS) after warm-up (every prompt touched once, then
    --warmup-minutes of the soak's own mix: its shapes compiled) grows by at most 5% by the end;
  - every greedy completion equals the same request sent alone afterwards (one at a time, the
    server otherwise idle), and every repeat of it during the soak was the same.

    python scripts/bench/soak_serve.py                                   # 20 minutes, 32 clients, K = 1000
    python scripts/bench/soak_serve.py --minutes 1 --warmup-minutes 0.5 --prompts 8 --clients 4   # a check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servelib import TEXTS, metrics, report, resident_kib, start_server, stop, write_adapters  # noqa: E402

MALFORMED = [b"{oops", b"[" * 100_000, b'{"model": "p0", "prompt": "a", "seed": 1' + b"0" * 40 + b"}",
             b'{"model": "p0", "prompt": "a\\ud800"}', b'{"model": "p0", "prompt": 5}', b'{"model": "../p0"}',
             b'{"model": "p0", "prompt": "a", "max_tokens": 0}', b'{"model": "p0", "prompt": "a", "temperature": NaN}',
             b'{"model": "p0", "messages": "hi"}', b'{"model": "nope", "prompt": "a"}', b'\xff\xfe']


class Soak:
    def __init__(self, base: str, k: int, max_tokens: int, adapters: list[str], seed: int):
        import httpx

        self.base, self.k, self.max_tokens, self.adapters = base, k, max_tokens, adapters
        self.http = httpx.Client(base_url=base, timeout=600, limits=httpx.Limits(max_connections=512))
        self.statuses = Counter()  # by status
        self.greedy = defaultdict(set)  # (model, text, max_tokens) -> texts seen
        self.loaded: list[str] = []  # names POSTed and not deleted yet
        self.lock = threading.Lock()
        self.seed = seed
        self.chats = True  # whether the model has a chat template (found at warm-up)

    def _count(self, status: int) -> None:
        with self.lock:
            self.statuses[status] += 1

    def _body(self, rng: random.Random) -> tuple[str, str, int]:
        return f"p{rng.randrange(self.k)}", rng.choice(TEXTS[:3]), rng.choice([self.max_tokens, self.max_tokens // 2])

    def greedy_request(self, rng: random.Random) -> None:
        model, text, n = self._body(rng)
        r = self.http.post("/v1/completions", json={"model": model, "prompt": text, "max_tokens": n,
                                                    "temperature": 0, "raw": True})
        self._count(r.status_code)
        if r.status_code == 200:
            with self.lock:
                self.greedy[(model, text, n)].add(r.json()["choices"][0]["text"])

    def sampled_request(self, rng: random.Random) -> None:
        model, text, n = self._body(rng)
        r = self.http.post("/v1/completions", json={"model": model, "prompt": text, "max_tokens": n,
                                                    "temperature": 1.0, "top_p": 0.9, "seed": rng.randrange(2 ** 31),
                                                    "raw": True})
        self._count(r.status_code)

    def chat_request(self, rng: random.Random) -> None:
        model, text, n = self._body(rng)
        r = self.http.post("/v1/chat/completions", json={"model": model, "max_tokens": n, "temperature": 0,
                                                         "messages": [{"role": "user", "content": text}]})
        self._count(r.status_code)

    def dropped_stream(self, rng: random.Random) -> None:
        model, text, n = self._body(rng)
        with self.http.stream("POST", "/v1/completions", json={"model": model, "prompt": text, "max_tokens": n,
                                                               "temperature": 0, "raw": True, "stream": True}) as r:
            self._count(r.status_code)
            for _ in r.iter_lines():
                break  # the client goes away after the first chunk

    def abandoned(self, rng: random.Random) -> None:
        import httpx

        model, text, n = self._body(rng)
        try:
            r = httpx.post(self.base + "/v1/completions", json={"model": model, "prompt": text, "max_tokens": n,
                                                                "temperature": 0, "raw": True},
                           timeout=rng.uniform(0.001, 0.05))
            self._count(r.status_code)
        except httpx.TimeoutException:
            pass  # gone before the answer

    def malformed(self, rng: random.Random) -> None:
        path = rng.choice(["/v1/completions", "/v1/chat/completions"])
        r = self.http.post(path, content=rng.choice(MALFORMED), headers={"content-type": "application/json"})
        self._count(r.status_code)
        if not 400 <= r.status_code < 500:
            print(f"malformed request answered {r.status_code}: {r.text[:200]}", flush=True)

    def load_or_unload(self, rng: random.Random) -> None:
        with self.lock:
            name = self.loaded.pop(rng.randrange(len(self.loaded))) if self.loaded and rng.random() < 0.5 else None
        if name is not None:
            r = self.http.delete(f"/v1/prompts/{name}")
        elif rng.random() < 0.5:  # a directory prompt unloaded (its next request loads it back)
            r = self.http.delete(f"/v1/prompts/p{rng.randrange(self.k)}")  # 404 if not resident
        else:
            name = f"extra{rng.randrange(10 ** 9)}"
            r = self.http.post("/v1/prompts", json={"name": name, "path": rng.choice(self.adapters)})
            if r.status_code == 200:
                with self.lock:
                    self.loaded.append(name)
        self._count(r.status_code)

    def client(self, index: int, deadline: float) -> None:
        rng = random.Random(self.seed * 1000 + index)
        actions = [(self.greedy_request, 50), (self.sampled_request, 15), (self.chat_request, 5 * self.chats),
                   (self.dropped_stream, 8), (self.abandoned, 7), (self.malformed, 10), (self.load_or_unload, 5)]
        while time.monotonic() < deadline:
            action = rng.choices([a for a, _ in actions], [w for _, w in actions])[0]
            try:
                action(rng)
            except Exception as e:  # a client's own failure (connection reset ...): counted, the soak goes on
                self._count(599)
                print(f"client {index}: {type(e).__name__}: {e}", flush=True)


def main() -> None:
    from jaxprompt.paths import DEFAULT_MODEL

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--prompts", type=int, default=1000, help="K adapters, half soft prompts, half prefixes")
    p.add_argument("--max-resident", type=int, default=256)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--warmup-minutes", type=float, default=2.0,
                   help="the soak's mix run before the resident memory it is measured against is read")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="soak_serve.md")
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as directory:
        soft = write_adapters(args.model, directory, (args.prompts + 1) // 2, "soft")
        prefix = write_adapters(args.model, directory, args.prompts // 2, "prefix", first=len(soft))
        proc, base = start_server(args.model, ["--prompts", directory, "--max-resident", str(args.max_resident),
                                               "--max-batch", str(args.max_batch), "--max-queue", "100000",
                                               "--warmup"])
        try:
            soak = Soak(base, args.prompts, args.max_tokens, soft[:4] + prefix[:4], args.seed)
            probe = soak.http.post("/v1/chat/completions", json={"model": "p0", "max_tokens": 1, "messages": [
                {"role": "user", "content": "hi"}]})
            soak.chats = probe.status_code == 200  # a model without a chat template: no chat requests
            warm = random.Random(-1)
            with ThreadPoolExecutor(args.clients) as pool:  # warm-up: every prompt, then the soak's own mix
                list(pool.map(lambda i: soak.greedy_request(warm), range(2 * args.prompts)))
                warm_until = time.monotonic() + 60 * args.warmup_minutes
                list(pool.map(lambda i: soak.client(args.clients + i, warm_until), range(args.clients)))
            soak.statuses.clear()
            rss_warm = resident_kib(proc.pid)
            print(f"warm: {rss_warm / 1024:.0f} MiB resident; soaking {args.minutes} min with {args.clients} clients",
                  flush=True)
            deadline = time.monotonic() + 60 * args.minutes
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(lambda i: soak.client(i, deadline), range(args.clients)))
            time.sleep(1.0)  # abandoned requests' slots freed at the next step boundary
            state, rss_end = metrics(base), resident_kib(proc.pid)
            results.append(("no 5xx", not any(s >= 500 for s in soak.statuses), dict(sorted(soak.statuses.items()))))
            free = {k: state.get(k) for k in ("jaxprompt_requests_running", "jaxprompt_requests_waiting",
                                              "jaxprompt_rows_in_slots")}
            results.append(("every slot free", all(v == 0 for v in free.values()), free))
            growth = rss_end / rss_warm - 1
            results.append(("resident memory after warm-up grows at most 5%", growth <= 0.05,
                            f"{rss_warm / 1024:.0f} MiB -> {rss_end / 1024:.0f} MiB ({100 * growth:+.1f}%)"))
            alone, differ = {}, []
            for (model, text, n), seen in sorted(soak.greedy.items()):
                r = soak.http.post("/v1/completions", json={"model": model, "prompt": text, "max_tokens": n,
                                                            "temperature": 0, "raw": True})
                alone[(model, text, n)] = r.json()["choices"][0]["text"] if r.status_code == 200 else None
                if seen != {alone[(model, text, n)]}:
                    differ.append(((model, text, n), sorted(seen), alone[(model, text, n)]))
            results.append(("every greedy completion equals it alone", not differ,
                            f"{len(alone)} distinct requests, {len(differ)} differ"
                            + (f": {differ[:3]}" if differ else "")))
            loads = {k: state.get(k) for k in ("jaxprompt_prompt_loads_total", "jaxprompt_prompt_evictions_total")}
        finally:
            stop(proc)
    lines = [f"{'PASS' if ok else 'FAIL'}  {name}: {json.dumps(detail) if isinstance(detail, dict) else detail}"
             for name, ok, detail in results]
    report("\n".join(lines) + f"\n\n{args.minutes} min, {args.clients} clients, {args.prompts} prompts, "
           f"--max-resident {args.max_resident}, --max-batch {args.max_batch}, max_tokens {args.max_tokens}; "
           f"{sum(soak.statuses.values())} requests; {json.dumps(loads)}; model {args.model}", args.out)
    sys.exit(0 if all(ok for _, ok, _ in results) else 1)


if __name__ == "__main__":
    main()
