"""`jaxprompt serve`: one frozen model, many learned prompts, behind an OpenAI-compatible HTTP API.

    options.py     the server's settings and its error body (OpenAI's shape)
    prompts.py     where prompts come from: runs and PEFT adapters by name, a directory of them
    library.py     which prompts are available and which resident: loads on demand, LRU eviction
    parse.py       request bodies -> engine requests, every field checked
    batcher.py     the worker thread between the HTTP handlers and the scheduler
    responses.py   completions -> OpenAI's response bodies and stream chunks
    metrics.py     /metrics in Prometheus' text format
    app.py         the HTTP API: routes, streaming, the API key

May import: jaxprompt.inference, jaxprompt.runs, jaxprompt.models, jaxprompt.data,
jaxprompt.prompts, jaxprompt.session, jaxprompt.settings, jaxprompt.config, jaxprompt.paths, jaxprompt.files
(never training).
"""
