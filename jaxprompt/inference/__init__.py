"""The one inference path: requests for any mix of prompts -> completions.

    requests.py    a request, its options, a completion; parsing an input into a template's fields
    sampling.py    greedy, temperature, top-k and top-p sampling, per row
    decode.py      prefill and decode steps with a KV cache, starting from embeddings
    engine.py      `Engine`: named prompts of one frozen model; `complete(requests)` in static batches
    slots.py       the device programs of continuous batching (slots, resize, prefill, place, step)
    scheduler.py   continuous (iteration-level) batching over the engine's rows (`jaxprompt serve`)

Evaluation's generation, `jaxprompt generate`, the server and lm-eval's `generate_until` all
call this package.

May import: jaxprompt.models, jaxprompt.data, jaxprompt.prompts, jaxprompt.session,
jaxprompt.precision, jaxprompt.settings (never training).
"""
