"""/metrics (serving/metrics.py) read by Prometheus' own parser (`prometheus_client.parser`) after
real requests: the counts are what was sent (requests per prompt, refusals per status, tokens as
the responses' usage says, one latency and first-token observation per answer), the gauges what
the server holds (nothing running or waiting once answered, the library's resident prompts)."""

from __future__ import annotations

import pytest

parser = pytest.importorskip("prometheus_client.parser")


def _scrape(client) -> dict:
    """(metric name, labels) -> value, for every sample."""
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in parser.text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _get(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counts_follow_the_requests_sent(served_app):
    client = served_app.client
    before = _scrape(client)
    sent = {"soft0": 3, "prefix0": 2}
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    for name, n in sent.items():
        for j in range(n):
            r = client.post("/v1/completions", json={"model": name, "prompt": ["hot", "big and"][j % 2],
                                                     "max_tokens": 2 + j, "temperature": 0, "raw": True})
            assert r.status_code == 200, r.text
            for key in usage:
                usage[key] += r.json()["usage"][key]
    r = client.post("/v1/chat/completions", json={"model": "soft0", "messages": [{"role": "user", "content": "hi"}],
                                                  "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200
    for key in usage:
        usage[key] += r.json()["usage"][key]
    with client.stream("POST", "/v1/completions", json={"model": "prefix0", "prompt": "up", "max_tokens": 3,
                                                        "temperature": 0, "raw": True, "stream": True}) as s:
        last = [line for line in s.iter_lines() if line.startswith("data: {")][-1]
    import json

    for key in usage:
        usage[key] += json.loads(last[len("data: "):])["usage"][key]
    bad = [client.post("/v1/completions", json={"model": "soft0", "prompt": "x", "max_tokens": 0}),
           client.post("/v1/completions", json={"model": "nope", "prompt": "x"}),
           client.post("/v1/completions", content=b"{oops", headers={"content-type": "application/json"})]
    assert [r.status_code for r in bad] == [400, 404, 400]

    after = _scrape(client)
    delta = lambda name, **labels: _get(after, name, **labels) - _get(before, name, **labels)
    assert delta("jaxprompt_requests_total", model="soft0", endpoint="completions") == sent["soft0"]
    assert delta("jaxprompt_requests_total", model="prefix0", endpoint="completions") == sent["prefix0"] + 1
    assert delta("jaxprompt_requests_total", model="soft0", endpoint="chat") == 1
    assert delta("jaxprompt_requests_refused_total", status="400") == 2
    assert delta("jaxprompt_requests_refused_total", status="404") == 1
    assert delta("jaxprompt_prompt_tokens_total") == usage["prompt_tokens"]
    assert delta("jaxprompt_generation_tokens_total") == usage["completion_tokens"] > 0
    answered = sum(sent.values()) + 2
    assert delta("jaxprompt_request_latency_seconds_count") == answered
    assert delta("jaxprompt_time_to_first_token_seconds_count") == answered
    assert _get(after, "jaxprompt_time_to_first_token_seconds_sum") <= _get(after, "jaxprompt_request_latency_seconds_sum")
    assert _get(after, "jaxprompt_requests_running") == 0 and _get(after, "jaxprompt_requests_waiting") == 0
    assert _get(after, "jaxprompt_rows_in_slots") == 0
    library = served_app.library
    assert _get(after, "jaxprompt_prompts_resident") == len(library.resident) <= served_app.options.max_resident
    assert _get(after, "jaxprompt_prompt_loads_total") == library.loads > 0
    assert _get(after, "jaxprompt_prompt_evictions_total") == library.evictions
    stats = served_app.engine.prompt_cache.stats
    assert _get(after, "jaxprompt_prompt_cache_hits_total") == stats["memory_hits"] + stats["disk_hits"] > 0
    assert _get(after, "jaxprompt_prompt_cache_misses_total") == stats["computed_heads"] > 0


def test_each_app_counts_alone(served_app):
    """Two apps in one process keep their own registries."""
    from fastapi.testclient import TestClient

    from jaxprompt.serving.app import build_app

    other = TestClient(build_app(served_app.engine, served_app.library, served_app.options, served_app.batcher))
    assert _get(_scrape(other), "jaxprompt_requests_total", model="soft0", endpoint="completions") == 0
