"""Prompts on demand (serving/library.py, serving/prompts.py): every adapter under --prompts DIR is
listed with its lineage, loaded on its first request, evicted least-recently-used past
--max-resident and loaded back from the host; every greedy completion equals PEFT's (transformers
with the adapter, token by token), whatever was loaded or evicted meanwhile; a slow load never
holds up another prompt's rows; concurrent requests for one cold prompt share one load."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ADAPTERS

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

TEXTS = ["hot and cold are", "The opposite of big is", "up and"]
NEW = 5


@pytest.fixture(scope="module")
def peft_greedy(served_app):
    """(adapter, text) -> PEFT's greedy completion text: transformers' model of the same checkpoint
    with the adapter, one forward pass over the whole text per token, cut at EOS."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(served_app.model)
    cache = {}

    def get(name: str, text: str) -> str:
        if (name, text) not in cache:
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(served_app.model),
                                              served_app.paths[name]).eval()
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
            new = []
            with torch.no_grad():
                for _ in range(NEW):
                    token = int(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax())
                    if token == tokenizer.eos_token_id:
                        break
                    new.append(token)
                    ids = torch.cat([ids, torch.tensor([[token]])], 1)
            cache[(name, text)] = tokenizer.decode(new)
        return cache[(name, text)]

    return get


def _complete(client, name: str, text: str) -> str:
    r = client.post("/v1/completions", json={"model": name, "prompt": text, "max_tokens": NEW, "temperature": 0,
                                             "raw": True})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def _models(client) -> dict:
    return {m["id"]: m for m in client.get("/v1/models").json()["data"]}


def test_the_directory_is_listed_with_its_lineage(served_app):
    models = _models(served_app.client)
    assert set(models) == set(ADAPTERS) | {served_app.engine.model_id}
    assert models[served_app.engine.model_id]["parent"] is None
    for name in ADAPTERS:
        assert models[name]["root"] == models[name]["parent"] == served_app.engine.model_id
    assert served_app.engine.prompt_cache.capacity == 2 * served_app.options.max_resident


def test_prompts_loaded_evicted_and_loaded_back_complete_as_peft(served_app, peft_greedy):
    """Four prompts, two resident: each round of concurrent requests loads and evicts."""
    client, library = served_app.client, served_app.library
    evictions, loads = library.evictions, library.loads
    jobs = [(name, text) for text in TEXTS[:2] for name in ADAPTERS] * 2
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda job: _complete(client, *job), jobs))
    for (name, text), text_out in zip(jobs, got):
        assert text_out == peft_greedy(name, text), (name, text)
    assert len({peft_greedy(n, TEXTS[0]) for n in ADAPTERS}) > 2  # the prompts differ: the mix means something
    assert library.evictions > evictions and library.loads > loads
    assert len(library.resident) <= served_app.options.max_resident
    resident = [m for m, card in _models(client).items() if card["resident"] and m != served_app.engine.model_id]
    assert sorted(resident) == sorted(library.resident)


def test_a_slow_load_never_holds_up_another_prompts_rows(served_app, peft_greedy, monkeypatch):
    """One prompt's load takes 3 s (its checkpoint read slowed down); meanwhile a resident prompt's
    requests are answered one after another, and all before the slow load ends. Three concurrent
    requests for the slow prompt share its one load."""
    import jaxprompt.serving.library as library_module

    client, library = served_app.client, served_app.library
    fast, slow = "prefix0", "soft1"
    _complete(client, fast, TEXTS[0])  # resident, its programs compiled
    if slow in library.resident:
        library.remove(slow)
    library.on_host.pop(slow, None)
    read = library_module.read

    def slow_read(engine, base, sources, which):
        if slow in sources:
            time.sleep(3.0)
        return read(engine, base, sources, which)

    monkeypatch.setattr(library_module, "read", slow_read)
    loads, start = library.loads, time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        cold = [pool.submit(_complete, client, slow, TEXTS[1]) for _ in range(3)]
        answered = []
        for text in TEXTS * 2:
            assert _complete(client, fast, text) == peft_greedy(fast, text)
            answered.append(time.monotonic() - start)
        slow_done = [f.result() for f in cold]
        slow_time = time.monotonic() - start
    assert slow_done == [peft_greedy(slow, TEXTS[1])] * 3
    assert max(answered) < 3.0 <= slow_time, (answered, slow_time)
    assert library.loads == loads + 1 + (fast not in library.resident)  # one load for the three requests


def test_unloading_and_loading_by_name(served_app, peft_greedy):
    client = served_app.client
    _complete(client, "prefix1", TEXTS[2])
    assert client.delete("/v1/prompts/prefix1").status_code == 200
    assert not _models(client)["prefix1"]["resident"]  # still available: the directory holds it
    assert client.delete("/v1/prompts/prefix1").status_code == 404
    assert _complete(client, "prefix1", TEXTS[2]) == peft_greedy("prefix1", TEXTS[2])  # loaded back
    r = client.post("/v1/prompts", json={"name": "again", "path": served_app.paths["soft0"]})
    assert r.status_code == 200 and r.json()["added"] == ["again"]
    assert _complete(client, "again", TEXTS[0]) == peft_greedy("soft0", TEXTS[0])
    assert client.post("/v1/prompts", json={"name": "again", "path": served_app.paths["soft0"]}).status_code == 409
    assert client.delete("/v1/prompts/again").status_code == 200
    assert "again" not in _models(client)
