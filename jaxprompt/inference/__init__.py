"""The one inference path: requests for any mix of prompts -> completions.

    sampling.py    `Sampling` (how a request decodes, declared once) and the sampler, per row
    requests.py    a request, a completion; parsing an input into a template's fields
    decode.py      prefill and decode steps with a KV cache, starting from embeddings
    served.py      a served prompt and an admitted request's row
    batch.py       rows -> one device batch (bucketed shapes); the static-batch decode program
    completions.py a row's ids -> its completion (EOS, max_tokens, stop strings; log-probabilities)
    engine.py      `Engine`: named prompts of one frozen model; `row`, `batch`, `finish`, and
                   `complete(requests)` in static batches
    chat.py        chat messages -> text, through the tokenizer's chat template (as transformers)
    slots.py       the device programs of continuous batching (slots, resize, prefill, place, step)
    scheduler.py   continuous (iteration-level) batching over the engine's rows (`jaxprompt serve`)

Evaluation's generation, `jaxprompt generate`, the server and lm-eval's `generate_until` all
call this package.

May import: jaxprompt.models, jaxprompt.data, jaxprompt.prompts, jaxprompt.session,
jaxprompt.precision, jaxprompt.settings (never training).
"""
