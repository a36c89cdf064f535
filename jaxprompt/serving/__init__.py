"""`jaxprompt serve`: one frozen model, many learned prompts, behind an OpenAI-compatible HTTP API.

    options.py     the server's settings and its error body (OpenAI's shape)
    prompts.py     which prompts are served: runs and PEFT adapters by name
    batcher.py     the worker thread between the HTTP handlers and the scheduler
    app.py         the HTTP API: routes, request parsing, streaming, the API key

May import: jaxprompt.inference, jaxprompt.runs, jaxprompt.models, jaxprompt.data,
jaxprompt.prompts, jaxprompt.session, jaxprompt.settings, jaxprompt.config, jaxprompt.paths (never training).
"""
