"""`jaxprompt serve`: learned prompts of one frozen model over an OpenAI-compatible HTTP API (jaxprompt/serving/)."""

from __future__ import annotations

from jaxprompt.cli.base import Command, settings
from jaxprompt.serving.options import ServeOptions


def cmd_serve(args) -> int:
    import uvicorn

    from jaxprompt.serving.app import build_app
    from jaxprompt.serving.batcher import Batcher
    from jaxprompt.serving.prompts import load_engine

    options = settings(args, ServeOptions)
    engine, base = load_engine(list(args.runs), list(options.adapter), options)
    batcher = Batcher(engine, options.max_queue, options.max_batch, options.batch_wait_ms / 1000)
    if options.warmup:  # the worker is idle until the server takes requests
        import time

        start = time.perf_counter()
        n = engine.warm_up(options.max_batch, scheduler=batcher.scheduler)
        print(f"warm-up: {n} programs compiled in {time.perf_counter() - start:.1f} s", flush=True)
    app = build_app(engine, base, options, batcher)
    print(f"serving {', '.join(sorted(engine.prompts))} on http://{options.host}:{options.port}/v1", flush=True)
    # uvicorn's SIGTERM: stop accepting, finish the requests in flight, then return
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning", timeout_graceful_shutdown=60)
    batcher.stop()
    return 0


SERVE = Command("serve", "serve learned prompts of one frozen model over an OpenAI-compatible HTTP API", cmd_serve,
                options=(ServeOptions,), own_sigterm=True,
                arguments=(("runs", "a run directory, or NAME=RUN_DIR (the name defaults to the directory's)", "*"),))
