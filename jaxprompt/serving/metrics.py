"""`GET /metrics`: the server's state and history in Prometheus' text format (prometheus-client,
one registry per app, so two servers in one process never share counts).

Counted as requests are answered: requests per prompt and endpoint, refused requests per status,
prompt and generated tokens, time to first token and latency (from arrival to the answer,
queueing and prompt loads included). Read at each scrape: requests running (in the decode loop)
and waiting (queued, or waiting for their prompt's load), rows in the decode slots, resident prompts, prompt loads and
evictions, and the prompt cache's hits (memory or disk) and misses (heads computed).
"""
from __future__ import annotations

# seconds: from a token's time on a small CPU model (milliseconds) to a long completion on a busy server
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    def __init__(self, batcher, library, prompt_cache):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("jaxprompt_requests", "requests answered, by prompt (model) and endpoint",
                                ["model", "endpoint"], registry=self.registry)
        self.refused = Counter("jaxprompt_requests_refused", "requests refused, by HTTP status", ["status"],
                               registry=self.registry)
        self.prompt_tokens = Counter("jaxprompt_prompt_tokens", "input positions of answered requests",
                                     registry=self.registry)
        self.generation_tokens = Counter("jaxprompt_generation_tokens", "tokens generated for answered requests",
                                         registry=self.registry)
        self.first_token = Histogram("jaxprompt_time_to_first_token_seconds", "from arrival to the first token "
                                     "decoded", buckets=BUCKETS, registry=self.registry)
        self.latency = Histogram("jaxprompt_request_latency_seconds", "from arrival to the whole answer",
                                 buckets=BUCKETS, registry=self.registry)
        self.loading = 0  # requests waiting for their prompt's load (the app counts them)
        self.registry.register(_State(batcher, library, prompt_cache, self))

    def answered(self, model: str, endpoint: str, completions, arrived: float, first_token: float | None,
                 now: float) -> None:
        self.requests.labels(model=model, endpoint=endpoint).inc()
        self.prompt_tokens.inc(sum(c.prompt_tokens for c in completions))
        self.generation_tokens.inc(sum(c.completion_tokens for c in completions))
        self.first_token.observe((first_token if first_token is not None else now) - arrived)
        self.latency.observe(now - arrived)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _State:
    """What is read at each scrape rather than counted as it happens."""

    def __init__(self, batcher, library, prompt_cache, metrics: Metrics):
        self.batcher, self.library, self.cache, self.metrics = batcher, library, prompt_cache, metrics

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = dict(self.cache.stats)
        yield GaugeMetricFamily("jaxprompt_requests_running", "requests in the decode loop",
                                value=self.batcher.running)
        yield GaugeMetricFamily("jaxprompt_requests_waiting", "requests queued or waiting for their prompt's load",
                                value=self.batcher.waiting + self.metrics.loading)
        yield GaugeMetricFamily("jaxprompt_rows_in_slots", "rows the scheduler holds (running in a decode slot or "
                                "waiting for one); 0 when every slot is free", value=self.batcher.scheduler.load)
        yield GaugeMetricFamily("jaxprompt_prompts_resident", "prompts on the device (the bare model not counted)",
                                value=len(self.library.resident))
        yield CounterMetricFamily("jaxprompt_prompt_loads", "prompts loaded onto the device", value=self.library.loads)
        yield CounterMetricFamily("jaxprompt_prompt_evictions", "prompts evicted from the device (least recently "
                                  "used)", value=self.library.evictions)
        yield CounterMetricFamily("jaxprompt_prompt_cache_hits", "heads found in the prompt cache (memory or disk)",
                                  value=stats["memory_hits"] + stats["disk_hits"])
        yield CounterMetricFamily("jaxprompt_prompt_cache_misses", "heads computed (not in the prompt cache)",
                                  value=stats["computed_heads"])

    def describe(self):
        return []
