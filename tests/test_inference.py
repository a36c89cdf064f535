"""The inference engine: each row of a batch mixing prompts equal to that prompt's run alone, seeded
sampling reproducible whatever shares the batch, and the cuts (EOS, max_tokens, stop strings). Its
greedy tokens are checked against independent references elsewhere: transformers' generation
(test_families.py) and a PyTorch greedy loop over the prompted embeddings (test_lm_eval_backend.py)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from conftest import ANTONYM_PAIRS

from jaxprompt.data.tasks import BUILTIN, Task
from jaxprompt.data.templates import Template
from jaxprompt.inference.decode import generate, left_pad
from jaxprompt.inference.engine import Engine
from jaxprompt.inference.requests import Request, RequestError
from jaxprompt.inference.sampling import Sampling
from jaxprompt.prompts import METHODS
from jaxprompt.session import Session

WORDS = [a for a, _ in ANTONYM_PAIRS]


@pytest.fixture(scope="module")
def engine(tiny_lm, gpt2_tokenizer):
    """One engine over a tiny GPT-2 serving a soft prompt, a prefix, an infix soft prompt and a
    written prompt (each with its own session: template and method)."""
    model, frozen = tiny_lm
    antonyms = BUILTIN["antonyms"]
    infix = Task("infix", Template("Opposite of {word1}: {prompt} ->", " {word2}"), hard_prompt="x")
    base = Session(model, frozen, gpt2_tokenizer, antonyms, METHODS["soft"](length=3))
    engine = Engine.of_session(base, max_batch=16)
    for name, task, method, seed in (("soft", antonyms, METHODS["soft"](length=3), 1),
                                     ("prefix", antonyms, METHODS["prefix"](length=2), 2),
                                     ("infix", infix, METHODS["soft"](length=2), 3)):
        session = Session(model, frozen, gpt2_tokenizer, task, method, prompt_cache=base.prompt_cache)
        prompt = method.init(jax.random.key(seed), model, frozen, task.template.n_virtual(method.length))
        prompt = jax.tree.map(lambda x: x * 3.0, prompt)  # far from the vocabulary: prompts that matter
        engine.add(name, session, prompt)
    engine.add("written", base, None, hard_prompt="opposites:")
    engine.add("bare", None)
    return engine


def _alone(engine, request):
    return engine.complete([request])[0]


def test_each_row_of_a_mixed_batch_equals_its_prompt_alone(engine):
    names = ["soft", "prefix", "infix", "written"]
    requests = [Request(names[i % 4], text=WORDS[i % len(WORDS)], sampling=Sampling(max_tokens=1 + i % 5))
                for i in range(12)]
    requests.append(Request("prefix", text="hot and cold are", raw=True, sampling=Sampling(max_tokens=4)))
    requests.append(Request("bare", text="Here are two", sampling=Sampling(max_tokens=3)))
    mixed = engine.complete(requests)
    for request, got in zip(requests, mixed):
        alone = _alone(engine, request)
        assert got.tokens == alone.tokens and got.text == alone.text, request
        assert len(got.tokens) <= request.sampling.max_tokens
    # the prompts differ, so the mix is not trivially one prompt's tokens
    assert len({tuple(c.tokens) for c in mixed[:4]}) > 1


def test_greedy_rows_equal_plain_decoding_of_the_whole_sequence(engine, tiny_lm):
    """Reference: the bare model's `generate` over the full written-prompt text, no head, no mixing."""
    model, frozen = tiny_lm
    tok = engine.tokenizer
    for word in WORDS[:3]:
        got = _alone(engine, Request("written", text=word, sampling=Sampling(max_tokens=5)))
        ids = tok.encode(BUILTIN["antonyms"].template.render_hard({"word1": word, "word2": ""}, "opposites:"))
        tokens, mask = left_pad([ids], tok.pad_token_id)
        out, lengths = generate(model, frozen, model.embed(frozen, tokens), mask, max_new_tokens=5)
        expected = [int(t) for t in np.asarray(out)[0, :int(lengths[0])]]
        if tok.eos_token_id in expected:
            expected = expected[:expected.index(tok.eos_token_id)]
        assert got.tokens == expected


def test_seeded_sampling_is_reproducible_whatever_shares_the_batch(engine):
    sampled = Sampling(max_tokens=6, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    request = Request("soft", text="hot", sampling=sampled)
    alone = _alone(engine, request)
    mixed = engine.complete([Request("prefix", text="big", sampling=Sampling(max_tokens=3)), request,
                             Request("infix", text="up", sampling=dataclass_replace(sampled, seed=8))])
    assert mixed[1].tokens == alone.tokens
    other_seeds = {tuple(_alone(engine, Request("soft", text="hot", sampling=dataclass_replace(sampled, seed=s)))
                         .tokens) for s in range(4)}
    assert len(other_seeds) > 1  # the seed matters


def dataclass_replace(options, **changes):
    import dataclasses

    return dataclasses.replace(options, **changes)


def test_stop_strings_and_max_tokens_cut_the_completion(engine):
    full = _alone(engine, Request("soft", text="hot", sampling=Sampling(max_tokens=8)))
    assert full.finish_reason == "length" and len(full.tokens) == 8
    short = _alone(engine, Request("soft", text="hot", sampling=Sampling(max_tokens=3)))
    assert short.tokens == full.tokens[:3] and short.finish_reason == "length"
    stop = full.text[len(full.text) // 2:][:3]
    cut = _alone(engine, Request("soft", text="hot", sampling=Sampling(max_tokens=8, stop=(stop,))))
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.index(stop)]
    assert "".join(cut.token_texts) == engine.tokenizer.decode(cut.tokens)


def test_requests_of_any_length_up_to_the_minimum_share_one_compiled_program(engine):
    """Rows stop at their own max_tokens inside one decode loop: asking 1..MIN_NEW_TOKENS tokens, in
    any mix, compiles no new program for a batch and input length already seen."""
    from jaxprompt.inference.batch import decode_batch
    from jaxprompt.inference.requests import MIN_NEW_TOKENS

    def batch(lengths):
        return [Request("prefix", text="hot and cold are", raw=True, sampling=Sampling(max_tokens=n)) for n in lengths]

    engine.complete(batch([MIN_NEW_TOKENS, 1]))
    compiled = decode_batch._cache_size()
    for lengths in ([1, 2], [3, 4], [5, MIN_NEW_TOKENS], [7, 7]):
        out = engine.complete(batch(lengths))
        assert [len(c.tokens) for c in out] == lengths
    assert decode_batch._cache_size() == compiled


def test_after_warm_up_short_requests_compile_nothing(engine):
    from jaxprompt.inference.batch import decode_batch

    engine.warm_up(2)
    compiled = decode_batch._cache_size()
    for name in ("soft", "prefix", "infix", "written", "bare"):
        request = engine.prompts[name].warm_up_request()
        for B in (1, 2):
            engine.complete([dataclasses.replace(request, sampling=Sampling(max_tokens=5))] * B)
    assert decode_batch._cache_size() == compiled


def test_logprobs_are_the_models_log_softmax(engine, tiny_lm):
    model, frozen = tiny_lm
    got = _alone(engine, Request("written", text="hot", sampling=Sampling(max_tokens=3, logprobs=2)))
    ids = engine.tokenizer.encode(BUILTIN["antonyms"].template.render_hard({"word1": "hot", "word2": ""},
                                                                          "opposites:"))
    logits = np.asarray(model.logits(frozen, np.asarray([ids + got.tokens])), np.float64)[0]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    expected = [logp[len(ids) - 1 + i, t] for i, t in enumerate(got.tokens)]
    np.testing.assert_allclose(got.logprobs, expected, atol=1e-4)
    assert all(len(top) == 2 for top in got.top_logprobs)


def test_bad_requests_are_one_line(engine):
    with pytest.raises(RequestError, match="unknown prompt 'nope'"):
        engine.complete([Request("nope", text="hot")])
    with pytest.raises(RequestError, match="was learned inside its template: raw text applies to prompts learned first"):
        engine.check(Request("soft", text="hot", raw=True))
    with pytest.raises(RequestError, match="the prompt text is empty"):
        engine.check(Request("soft", text="  "))
    with pytest.raises(ValueError, match="needs .* positions; the model has 96"):
        engine.check(Request("soft", text="hot", sampling=Sampling(max_tokens=200)))


def test_streamed_text_is_always_a_prefix_of_the_completion(engine):
    """What a stream sends after each token is a prefix of the completion `Engine.finish` makes of all of
    them: a stop string split over tokens is held back until it is known, a character whose bytes
    span tokens is sent whole; text that can be neither is sent at once."""
    tok = engine.tokenizer
    cases = [(" hot and cold, big and small", ("and c",)), (" café 😀 and more", ()), (" up, down", ("n!",)),
             (" plain words here", ())]
    for text, stop in cases:
        ids = tok.encode(text) + [tok.eos_token_id, 11]
        options = Sampling(max_tokens=len(ids), stop=stop)
        final = engine.finish([engine.row(Request("bare", text="x", sampling=options, raw=True))], [ids])[0].text
        sent = ""
        for n in range(1, len(ids) + 1):
            now = engine.streamable(options, ids[:n])
            assert now.startswith(sent) and final.startswith(now), (text, n, now, final)
            sent = now
        if not stop and "😀" not in text:  # nothing to hold back: every token's text goes out at once
            assert all(engine.streamable(options, ids[:n]) == tok.decode(ids[:n]) for n in range(1, len(ids) - 1))
    # the held-back cases hold back: mid-stop-string and mid-character
    ids = tok.encode(" hot and cold")
    assert engine.streamable(Sampling(stop=("and c",)), ids[:2]) == " hot "
    emoji = tok.encode(" 😀")
    assert len(emoji) > 1 and engine.streamable(Sampling(), emoji[:-1]) == " "
