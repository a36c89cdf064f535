"""Every bad request to every endpoint (serving/parse.py, serving/app.py), field by field: wrong
types, out of range, too big, bad encodings, hostile nesting. Each is a 4xx with OpenAI's error
shape {"error": {"message", "type", "param", "code"}}, never a 5xx, and touches nothing: afterwards
the server answers exactly as before and holds the same prompts."""

from __future__ import annotations

import json

import pytest

OK = {"model": "prefix0", "prompt": "hot and", "max_tokens": 3, "temperature": 0, "raw": True}
CHAT = {"model": "prefix0", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}
USER = {"role": "user", "content": "hi"}


def _with(base: dict, **changes) -> dict:
    body = dict(base)
    for key, value in changes.items():
        if value is _ABSENT:
            body.pop(key, None)
        else:
            body[key] = value
    return body


_ABSENT = object()


def _raw(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode()


# (label, method, path, JSON body or raw bytes, expected status)
CASES = [
    # the body itself
    ("not JSON", "POST", "/v1/completions", b"{oops", 400),
    ("invalid UTF-8", "POST", "/v1/completions", b'{"model": "\xff\xfe"}', 400),
    ("a lone surrogate", "POST", "/v1/completions", _raw('{"model": "prefix0", "prompt": "a\\ud800"}'), 400),
    ("nested 100,000 deep", "POST", "/v1/completions", b"[" * 100_000, 400),
    ("nested objects 100,000 deep", "POST", "/v1/chat/completions", b'{"a":' * 100_000, 400),
    ("an array", "POST", "/v1/completions", b"[1, 2]", 400),
    ("a string", "POST", "/v1/completions", b'"hi"', 400),
    ("null", "POST", "/v1/completions", b"null", 400),
    ("empty", "POST", "/v1/completions", b"", 400),
    ("too big", "POST", "/v1/completions", _raw(json.dumps({**OK, "prompt": "x" * 1_100_000})), 413),
    # model
    *[(f"model {v!r:.30}", "POST", "/v1/completions", _with(OK, model=v), s) for v, s in [
        (_ABSENT, 400), (5, 400), (["prefix0"], 400), ("", 400), (None, 400), ("nope", 404),
        ("../etc/passwd", 404), ("prefix0/../../x", 404), ("/etc", 404), ("prefix0@9", 404), ("a" * 10_000, 404),
        (".", 404), ("..", 404)]],
    # prompt
    *[(f"prompt {v!r:.30}", "POST", "/v1/completions", _with(OK, prompt=v), 400) for v in [
        _ABSENT, 5, [], [[]], ["a", 3], [1, "a"], [[1], "a", 2], [-1], [10 ** 6], [[1, 2 ** 40]], [True], "", "   ",
        [""], ["a"] * 5, {"a": 1}, "hot " * 120, list(range(200)), True]],
    # sampling fields, as Sampling declares them, and the server's limits
    *[(f"{k} {v!r:.30}", "POST", "/v1/completions", _with(OK, **{k: v}), 400) for k, vs in {
        "max_tokens": [0, -1, 1.5, "2", True, 25, 10 ** 6, 10 ** 40],
        "temperature": [-0.1, 2.5, "hot", [1], True],
        "top_p": [0, 1.5, -1, "x"],
        "top_k": [-1, 1.5, "3", 10 ** 6],
        "seed": [-1, 10 ** 40, 2 ** 63, 1.0, "1"],
        "stop": [5, ["a"] * 5, [1], {"a": 1}, [["a"]]],
        "logprobs": [6, -1, True, "2"],
        "echo": ["yes", 1], "stream": ["true", 1], "raw": [1, "no"], "n": [2, 0, "1"],
        "stream_options": ["x", {"include_usage": "yes"}],
    }.items() for v in vs],
    ("temperature NaN", "POST", "/v1/completions", _raw('{"model": "prefix0", "prompt": "a", "temperature": NaN}'), 400),
    ("temperature Infinity", "POST", "/v1/completions", _raw('{"model": "prefix0", "prompt": "a", "temperature": '
                                                              'Infinity}'), 400),
    ("temperature 10^400", "POST", "/v1/completions", _raw('{"model": "prefix0", "prompt": "a", "temperature": 1'
                                                            + "0" * 400 + "}"), 400),
    ("seed of 5000 digits", "POST", "/v1/completions", _raw('{"model": "prefix0", "prompt": "a", "seed": 1'
                                                             + "0" * 5000 + "}"), 400),
    # chat
    *[(f"messages {v!r:.40}", "POST", "/v1/chat/completions", _with(CHAT, messages=v), 400) for v in [
        _ABSENT, "hi", [], [1], [{"role": "user"}], [{"role": "bot", "content": "x"}], [{"role": 5, "content": "x"}],
        [{"role": "user", "content": 5}], [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
        [{"role": "user", "content": [{"type": "text"}]}], [{**USER, "name": 5}], [{"role": "tool", "content": "x"}],
        [{"role": "user", "content": "hot " * 120}]]],
    *[(f"chat {k} {v!r:.30}", "POST", "/v1/chat/completions", _with(CHAT, **{k: v}), 400) for k, vs in {
        "max_completion_tokens": [0, "x", 25], "max_tokens": [-3], "logprobs": ["yes", 1], "top_logprobs": [6, -1, "2"],
        "n": [3], "temperature": [3], "seed": [10 ** 40], "stop": [["a"] * 5], "stream": ["yes"],
    }.items() for v in vs],
    ("chat top_logprobs without logprobs", "POST", "/v1/chat/completions", _with(CHAT, top_logprobs=2), 400),
    ("chat unknown model", "POST", "/v1/chat/completions", _with(CHAT, model="nope"), 404),
    ("chat nested 100,000 deep", "POST", "/v1/chat/completions", b"[" * 100_000, 400),
    # loading and unloading prompts
    *[(f"load {b!r:.40}", "POST", "/v1/prompts", b, s) for b, s in [
        ([1], 400), ({}, 400), ({"path": 5}, 400), ({"path": ""}, 400), ({"path": "/no/such/run"}, 400),
        ({"path": "/etc/hostname"}, 400), ({"path": "/tmp", "name": "x"}, 400), ({"path": "/tmp", "name": 5}, 400),
        ({"path": "/tmp", "name": " "}, 400)]],
    ("unload an unknown prompt", "DELETE", "/v1/prompts/nope", None, 404),
    ("unload a traversal", "DELETE", "/v1/prompts/../../etc", None, 404),
    # routes
    ("GET a POST route", "GET", "/v1/completions", None, 405),
    ("an unknown route", "POST", "/v1/nothing", {}, 404),
    ("PUT the models", "PUT", "/v1/models", {}, 405),
]


def _send(client, method: str, path: str, body):
    if isinstance(body, bytes):
        return client.request(method, path, content=body, headers={"content-type": "application/json"})
    return client.request(method, path, json=body) if body is not None else client.request(method, path)


def test_every_bad_request_is_a_4xx_in_openais_shape_and_changes_nothing(served_app):
    client, library = served_app.client, served_app.library
    before = client.post("/v1/completions", json=OK).json()["choices"][0]["text"]
    chat_before = client.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["message"]["content"]
    explicit, available = dict(library.explicit), set(library.available())
    failures = []
    for label, method, path, body, status in CASES:
        r = _send(client, method, path, body)
        error = r.json().get("error") if r.headers.get("content-type", "").startswith("application/json") else None
        if r.status_code != status or not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"} \
                or not error["message"] or "\n" in error["message"] or len(error["message"]) > 1200:
            failures.append((label, r.status_code, r.text[:300]))
    assert not failures, failures
    assert client.post("/v1/completions", json=OK).json()["choices"][0]["text"] == before
    assert client.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["message"]["content"] == chat_before
    assert library.explicit == explicit and set(library.available()) == available
    assert served_app.batcher.running == 0 and served_app.batcher.waiting == 0


@pytest.mark.parametrize("body,param,words", [
    (_with(OK, seed=10 ** 40), "seed", "'seed'"),
    (_with(OK, max_tokens=25), "max_tokens", "[1, 24]"),
    (_with(OK, top_k=10 ** 6), "prompt", "vocabulary"),
    (_with(OK, stop=["a"] * 5), "stop", "at most 4"),
    (_with(OK, model="nope"), "model", "unknown model 'nope'"),
])
def test_a_refusal_names_the_field_and_what_it_allows(served_app, body, param, words):
    error = served_app.client.post("/v1/completions", json=body).json()["error"]
    assert error["param"] == param and words in error["message"], error
