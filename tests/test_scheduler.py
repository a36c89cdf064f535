"""Continuous batching (`jaxprompt.scheduler`): a row admitted mid-flight into a freed slot, or into
slots grown or shrunk around running rows, gives the tokens of its request alone (`Engine.complete`,
itself checked against plain decoding in test_inference); seeded sampling reproduces whatever else
is in the slots; a finished or cancelled row's slot is reused; after warm-up a mixed stream
compiles nothing."""

from __future__ import annotations

import dataclasses

from test_inference import engine  # noqa: F401  (the module fixture: soft, prefix, infix, written, bare)

from jaxprompt.inference.requests import Request
from jaxprompt.inference.sampling import Sampling
from jaxprompt.inference.scheduler import Scheduler
from jaxprompt.inference.slots import compiled_programs


def _alone(engine, request):
    return engine.complete([request])[0].tokens


def _until(scheduler, ticket):
    while not ticket.finished:
        scheduler.step()


def test_a_row_admitted_mid_flight_into_a_freed_slot_equals_it_alone(engine):
    s = Scheduler(engine, max_batch=2)
    short = s.submit(Request("prefix", text="hot", sampling=Sampling(max_tokens=2)))
    long = s.submit(Request("infix", text="big", sampling=Sampling(max_tokens=12)))
    s.step()
    slots = {id(t): b for b, t in s.running.items()}
    _until(s, short)
    assert not long.finished and len(long.tokens) >= 2
    late = s.submit(Request("soft", text="up", sampling=Sampling(max_tokens=6)))
    s.step()
    assert s.running.get(slots[id(short)]) is late  # the freed slot, taken while `long` decodes on
    while s.busy:
        s.step()
    for t in (short, long, late):
        assert t.completion.tokens == _alone(engine, t.request), t.request


def test_slots_grown_and_shrunk_around_running_rows_keep_their_tokens(engine):
    """One row running; three more arrive (slots 1 -> 4), one asking more tokens than the cache has
    (cache slots grown, a head added); then the upper slots empty (4 -> 2)."""
    s = Scheduler(engine, max_batch=4)
    first = s.submit(Request("bare", text="Here are two", sampling=Sampling(max_tokens=20)))
    for _ in range(3):
        s.step()
    shape = s._shape()
    others = [s.submit(Request(n, text=w, sampling=Sampling(max_tokens=k)))
              for n, w, k in (("written", "hot", 40), ("soft", "cold", 3), ("prefix", "up", 2))]
    s.step()
    grown = s._shape()
    assert grown[0] == 4 and grown[1] > shape[1] and grown[2] > shape[2] == 0
    seen = {grown[0]}
    while s.busy:
        s.step()
        if s.slots is not None:
            seen.add(s._shape()[0])
    assert seen == {4, 2}
    for t in [first, *others]:
        assert t.completion.tokens == _alone(engine, t.request), t.request


def test_seeded_sampling_reproduces_whatever_else_is_in_the_slots(engine):
    sampled = Sampling(max_tokens=6, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    request = Request("soft", text="hot", sampling=sampled)
    alone = Scheduler(engine, max_batch=4).run([request])[0].tokens
    s = Scheduler(engine, max_batch=4)
    s.submit(Request("prefix", text="big", sampling=Sampling(max_tokens=9, temperature=0.7, seed=1)))
    s.step()
    s.step()
    joined = s.submit(request)  # admitted at step 2 beside a sampled row, into a different slot
    s.submit(Request("infix", text="up", sampling=dataclasses.replace(sampled, seed=8)))
    _until(s, joined)
    assert joined.completion.tokens == alone == _alone(engine, request)
    seeds = {tuple(Scheduler(engine, 1).run([Request("soft", text="hot", sampling=dataclasses.replace(sampled, seed=k))])
                   [0].tokens) for k in range(4)}
    assert len(seeds) > 1  # the seed matters


def test_a_cancelled_row_frees_its_slot_for_the_next_request(engine):
    s = Scheduler(engine, max_batch=1)
    gone = s.submit(Request("soft", text="hot", sampling=Sampling(max_tokens=16)))
    s.step()
    s.step()
    s.cancel(gone)
    waiting = s.submit(Request("prefix", text="cold", sampling=Sampling(max_tokens=3)))
    s.step()
    assert list(s.running.values()) == [waiting] or waiting.finished
    _until(s, waiting)
    assert waiting.completion.tokens == _alone(engine, waiting.request)
    assert not gone.finished and not s.busy


def test_errors_are_the_requests_own(engine):
    s = Scheduler(engine, max_batch=2)
    bad = s.submit(Request("nope", text="hot"))
    good = s.submit(Request("soft", text="hot", sampling=Sampling(max_tokens=2)))
    while s.busy:
        s.step()
    assert "unknown prompt 'nope'" in str(bad.error) and good.completion.tokens == _alone(engine, good.request)


def test_after_warm_up_a_mixed_stream_compiles_nothing(engine):
    s = Scheduler(engine, max_batch=4)
    assert engine.warm_up(4, scheduler=s) > 0
    compiled = compiled_programs()
    names = ["soft", "prefix", "infix", "written", "bare"]
    stream = [engine.prompts[n].warm_up_request() for n in names]
    lengths = [16, 2, 2, 2] + [1 + (3 * i) % 16 for i in range(11)]
    stream = [dataclasses.replace(r, sampling=Sampling(max_tokens=m, temperature=0.5 * (i % 2), seed=i))
              for i, (r, m) in enumerate(zip(stream * 3, lengths))]
    # arrivals between steps: a long request, then three short ones at once (1 slot grows to 4);
    # they end while the long one runs on in slot 0 (4 slots shrink to 1); then bursts and lulls
    arrivals, tickets, slots = iter([1, 3, 0, 0, 0, 0, 2, 0, 1, 3, 0, 2, 1, 1, 1]), [], [0]
    while len(tickets) < len(stream) or s.busy:
        for request in stream[len(tickets):len(tickets) + next(arrivals, 1)]:
            tickets.append(s.submit(request))
        s.step()
        slots.append(s._shape()[0])
    assert all(t.completion is not None for t in tickets)
    assert {(1, 4), (4, 1)} <= set(zip(slots, slots[1:])), slots  # the jumps this stream is for
    assert compiled_programs() == compiled
