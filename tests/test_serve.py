"""`jaxprompt serve` as a client sees it: the real server in a subprocess on a free port, spoken to with
the official `openai` client, serving a directory of runs on demand (3 prompts, 2 resident).
Greedy completions equal `jaxprompt generate` of each run alone (24 concurrent requests of mixed
lengths, streamed and not, loading and evicting prompts as they come); seeded sampling
reproduces; a chat completion equals the completion of transformers' tokens of the conversation;
a prompt learned inside its template is refused in chat, saying why; every bad request is a 4xx
JSON error in OpenAI's shape, and the server keeps serving; SIGTERM finishes what is in flight.
Without the [serve] extra, `jaxprompt serve` says in one line what to install."""

from __future__ import annotations

import ast
import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ANTONYM_PAIRS, REPO

from jaxprompt.cli.main import main

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

FAST = ["--steps", "2", "--batch-size", "8", "--eval-examples", "4", "--eval-every", "2", "--no-progress",
        "--lr", "0.05", "--no-baseline"]
METHODS = {"soft": ["--method", "soft", "--prompt-length", "3"], "prefix": ["--method", "prefix", "--prompt-length", "2"],
           "ptuning": ["--method", "ptuning", "--prompt-length", "2"]}
WORDS = [a for a, _ in ANTONYM_PAIRS]
KEY = "sk-test"


@pytest.fixture(scope="module")
def runs(chat_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    out = {}
    for name, flags in METHODS.items():
        out[name] = str(root / name)
        assert main(["train", "--model", chat_model_dir, "--out", out[name], *FAST, *flags]) == 0
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(runs, chat_model_dir, tmp_path_factory):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAXPROMPT_CACHE": str(tmp_path_factory.mktemp("cache"))}
    directory = os.path.dirname(next(iter(runs.values())))
    proc = subprocess.Popen([sys.executable, "-m", "jaxprompt", "serve", "--model", chat_model_dir, "--prompts",
                             directory, "--max-resident", "2", "--port", str(port), "--api-key", KEY,
                             "--max-queue", "40", "--max-batch", "8", "--max-tokens", "40", "--batch-wait-ms", "20"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"the server exited: {proc.stdout.read()}")
        time.sleep(0.5)
    yield proc, base
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[1]}/v1", api_key=KEY, max_retries=0)


def _generate(run: str, words: list[str], n: int) -> list[str]:
    """`jaxprompt generate` of one run alone: the completion it prints after the templated input
    (`input -> 'completion'`, stripped)."""
    out = io.StringIO()
    args = ["generate", run, "--max-new-tokens", str(n)] + [a for w in words for a in ("--text", w)]
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    return [ast.literal_eval(line.rsplit(" -> ", 1)[1]) for line in out.getvalue().splitlines()]


@pytest.mark.slow
def test_models_lists_every_prompt_and_the_bare_model(client, runs, chat_model_dir):
    ids = {m.id for m in client.models.list().data}
    assert ids == set(runs) | {chat_model_dir}


@pytest.mark.slow
def test_greedy_completions_equal_generate_of_each_run_alone(client, runs, server):
    lengths = [1, 3, 6]
    # 24 requests: every prompt with every length
    jobs = [(name, WORDS[i % len(WORDS)], lengths[(i // len(runs)) % 3]) for i, name in enumerate(list(runs) * 8)]
    expected = {}
    for name in runs:
        for n in lengths:
            words = [w for m, w, k in jobs if m == name and k == n]
            if words:
                expected.update({(name, w, n): t for w, t in zip(words, _generate(runs[name], words, n))})

    def ask(job):
        name, word, n = job
        if n == 3:  # some requests stream
            text, usage = "", None
            for chunk in client.completions.create(model=name, prompt=word, max_tokens=n, temperature=0, stream=True):
                text += "".join(c.text for c in chunk.choices)
                usage = chunk.usage or usage
            return text, usage
        r = client.completions.create(model=name, prompt=word, max_tokens=n, temperature=0)
        return r.choices[0].text, r.usage

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(ask, jobs))
    for job, (text, usage) in zip(jobs, answers):
        assert text.strip() == expected[job], job
        assert usage.completion_tokens <= job[2] and usage.prompt_tokens > 0
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    metrics = httpx.get(server[1] + "/metrics", timeout=30).text  # /metrics is outside /v1
    evictions = [line for line in metrics.splitlines() if line.startswith("jaxprompt_prompt_evictions_total ")]
    assert float(evictions[0].split()[1]) > 0  # 3 prompts through 2 resident places


@pytest.mark.slow
def test_chat_completions_read_the_rendered_conversation_after_the_prompt(client, chat_model_dir):
    """Chat with a prefix prompt (it reaches every request) equals the completion of transformers'
    tokens of the same conversation; a prompt learned inside its template is refused, saying why."""
    transformers = pytest.importorskip("transformers")
    messages = [{"role": "system", "content": "Opposites."}, {"role": "user", "content": "hot"}]
    ids = transformers.AutoTokenizer.from_pretrained(chat_model_dir).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    chat = client.chat.completions.create(model="prefix", messages=messages, max_tokens=6, temperature=0)
    plain = client.completions.create(model="prefix", prompt=ids, max_tokens=6, temperature=0)
    assert chat.choices[0].message.content == plain.choices[0].text
    assert chat.usage.prompt_tokens == plain.usage.prompt_tokens == len(ids)
    with pytest.raises(openai.BadRequestError, match="learned inside its template"):
        client.chat.completions.create(model="soft", messages=messages, max_tokens=2)


@pytest.mark.slow
def test_a_stream_sends_each_token_as_it_is_decoded(server, client):
    """The chunks of a streamed completion arrive while it decodes, not at its end: the first text
    arrives long before the last (40 decode steps apart), and they add up to the completion."""
    whole = client.completions.create(model="soft", prompt="hot", max_tokens=40, temperature=0).choices[0].text
    start, arrivals, text = time.perf_counter(), [], ""
    for chunk in client.completions.create(model="soft", prompt="hot", max_tokens=40, temperature=0, stream=True):
        piece = "".join(c.text for c in chunk.choices)
        if piece:
            arrivals.append(time.perf_counter() - start)
            text += piece
    assert text == whole and len(arrivals) >= 10
    # sent at the end, every chunk arrives within a millisecond or two of the first
    assert arrivals[-1] - arrivals[0] > 0.5 * arrivals[-1], arrivals


@pytest.mark.slow
def test_a_list_prompt_echo_and_logprobs(client):
    r = client.completions.create(model="soft", prompt=["hot", "big"], max_tokens=2, temperature=0, echo=True,
                                  logprobs=2)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].text.startswith("hot") and r.choices[1].text.startswith("big")
    assert len(r.choices[0].logprobs.token_logprobs) == len(r.choices[0].logprobs.tokens)
    assert all(lp <= 0 for lp in r.choices[0].logprobs.token_logprobs)


@pytest.mark.slow
def test_seeded_sampling_reproduces(client):
    ask = lambda seed: client.completions.create(model="prefix", prompt="hot", max_tokens=8, temperature=1.0,
                                                 top_p=0.95, seed=seed).choices[0].text
    assert ask(3) == ask(3)
    assert len({ask(s) for s in range(4)}) > 1


def _post(base, path, body=None, key=KEY, raw=None, method="post"):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        return httpx.request(method, base + path, content=raw, headers={**headers, "content-type": "application/json"},
                             timeout=60)
    return httpx.request(method, base + path, json=body, headers=headers, timeout=60)


@pytest.mark.slow
def test_every_bad_request_is_a_4xx_json_error_and_the_server_keeps_serving(server, client, runs, tmp_path):
    proc, base = server
    ok = {"model": "soft", "prompt": "hot", "max_tokens": 2}
    other_model = tmp_path / "other-run"
    shutil.copytree(runs["soft"], other_model)
    import json
    info = json.load(open(other_model / "run.json"))
    info["model_dir"] = str(REPO / "checkpoints" / "tiny-gpt2-wordnet")
    (other_model / "run.json").write_text(json.dumps(info))
    cases = {
        "unknown prompt": (lambda: _post(base, "/v1/completions", {**ok, "model": "nope"}), 404, "unknown model 'nope'"),
        "malformed JSON": (lambda: _post(base, "/v1/completions", raw=b"{oops"), 400, "not valid JSON"),
        "wrong type": (lambda: _post(base, "/v1/completions", {**ok, "max_tokens": "two"}), 400,
                       "'max_tokens' 'two': must be an integer"),
        "max_tokens past the limit": (lambda: _post(base, "/v1/completions", {**ok, "max_tokens": 10_000}), 400,
                                      "'max_tokens' 10000: must be an integer in [1, 40]"),
        "past the position table": (lambda: _post(base, "/v1/completions", {**ok, "prompt": "hot " * 60,
                                                                            "max_tokens": 40}), 400, "positions"),
        "empty prompt": (lambda: _post(base, "/v1/completions", {**ok, "prompt": ""}), 400, "'prompt' is empty"),
        "wrong API key": (lambda: _post(base, "/v1/completions", ok, key="wrong"), 401, "API key"),
        "no API key": (lambda: _post(base, "/v1/models", method="get", key=None), 401, "API key"),
        "not a run": (lambda: _post(base, "/v1/prompts", {"name": "x", "path": str(tmp_path)}), 400,
                      "not a jaxprompt run directory"),
        "another model's prompt": (lambda: _post(base, "/v1/prompts", {"name": "y", "path": str(other_model)}), 400,
                                   "this server serves"),
    }
    for label, (send, status, message) in cases.items():
        r = send()
        assert r.status_code == status, (label, r.text)
        error = r.json()["error"]
        assert message in error["message"] and {"type", "param", "code"} <= set(error), (label, error)
        assert proc.poll() is None, label
    assert client.completions.create(model="soft", prompt="hot", max_tokens=1, temperature=0).choices[0].text


@pytest.mark.slow
def test_too_many_queued_requests_get_429(server):
    _, base = server
    body = {"model": "soft", "prompt": "hot", "max_tokens": 40, "temperature": 0}
    with ThreadPoolExecutor(60) as pool:
        statuses = [r.status_code for r in pool.map(lambda _: _post(base, "/v1/completions", body), range(60))]
    assert 429 in statuses and 200 in statuses and set(statuses) <= {200, 429}


@pytest.mark.slow
def test_prompts_load_and_unload_while_serving(client, server, runs):
    _, base = server
    r = _post(base, "/v1/prompts", {"name": "again", "path": runs["prefix"]})
    assert r.status_code == 200, r.text
    same = lambda m: client.completions.create(model=m, prompt="hot", max_tokens=4, temperature=0).choices[0].text
    assert same("again") == same("prefix")
    assert _post(base, "/v1/prompts/again", method="delete").status_code == 200
    assert "again" not in {m.id for m in client.models.list().data}
    assert _post(base, "/v1/prompts/again", method="delete").status_code == 404


def test_serve_without_its_extra_says_what_to_install_in_one_line(tmp_path):
    """fastapi hidden from the interpreter (as an install without [serve] lacks it)."""
    code = ("import sys; sys.modules['fastapi'] = None\n"
            "from jaxprompt.cli.main import main\nsys.exit(main(['serve']))")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "jaxprompt serve: error: jaxprompt serve needs the [serve] extra: pip install 'jaxprompt[serve]' "
        "(fastapi is not installed)"]


@pytest.mark.slow
def test_sigterm_finishes_the_requests_in_flight_then_exits(server, client):
    proc, base = server
    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(client.completions.create, model="soft", prompt=w, max_tokens=30, temperature=0)
                   for w in WORDS[:4]]
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        texts = [f.result(timeout=120).choices[0].text for f in pending]
    assert len(texts) == 4
    # uvicorn re-raises the signal it caught once it has shut down: the exit is SIGTERM's (or 0)
    assert proc.wait(timeout=120) in (0, -signal.SIGTERM)


def test_the_served_weights_are_held_as_the_first_run_trained_or_as_told(trained_run):
    """`serve` holds the frozen model as its first run trained (--quantize run), or as --quantize says;
    every run's prompt is served on it."""
    from jaxprompt.models.quantize import quantized_scheme
    from jaxprompt.serving.library import Library
    from jaxprompt.serving.options import ServeOptions
    from jaxprompt.serving.prompts import load_engine

    for quantize, scheme in (("run", None), ("int8", "int8")):
        engine, base = load_engine([trained_run], ServeOptions(quantize=quantize))
        assert quantized_scheme(engine.frozen) == scheme
        library = Library(engine, base)
        try:
            library.add("antonyms", trained_run)
            library.acquire("antonyms").result(timeout=300)
            assert "antonyms" in engine.prompts
        finally:
            library.close()
