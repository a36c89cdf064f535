"""`jaxprompt serve`: learned prompts of one frozen model over an OpenAI-compatible HTTP API (jaxprompt/serving/)."""

from __future__ import annotations

import os

from jaxprompt.cli.base import CLIError, Command, settings
from jaxprompt.serving.options import INSTALL, BadRequest, ServeOptions

SERVE_PACKAGES = ("fastapi", "uvicorn", "prometheus_client", "jinja2")  # the [serve] extra, as imported


def require_serve() -> None:
    """One line naming the extra to install, where a package of it is missing."""
    import importlib

    for name in SERVE_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            raise CLIError(f"{INSTALL} ({name} is not installed)") from None


def cmd_serve(args) -> int:
    options = settings(args, ServeOptions)
    require_serve()
    if options.prompts is not None and not os.path.isdir(options.prompts):
        raise CLIError(f"--prompts {options.prompts} is not a directory")
    import uvicorn

    from jaxprompt.inference.chat import ChatTemplate
    from jaxprompt.serving.app import build_app
    from jaxprompt.serving.batcher import Batcher
    from jaxprompt.serving.library import Library
    from jaxprompt.serving.prompts import load_engine, named, representatives

    try:
        engine, base = load_engine(list(args.runs), options)
        library = Library(engine, base, options.which, options.max_resident,
                          os.path.realpath(options.prompts) if options.prompts else None)
        for spec in [*args.runs, *options.adapter]:  # loaded now: a bad one stops the server before it starts
            library.add(*named(spec))
    except BadRequest as e:
        raise CLIError(str(e)) from None
    batcher = Batcher(engine, options.max_queue, options.max_batch, options.batch_wait_ms / 1000)
    if options.warmup:  # the worker is idle until the server takes requests
        import time

        start = time.perf_counter()
        if library.directory:  # one prompt of each kind in the directory: the shapes its prompts decode in
            for name in representatives(library.directory, {})[:options.max_resident]:
                try:
                    library.acquire(name).result()
                except (BadRequest, ValueError, OSError) as e:  # served as it is: refused on its own request
                    print(f"warm-up: {name} not loaded ({' '.join(str(e).split())})", flush=True)
        n = engine.warm_up(options.max_batch, scheduler=batcher.scheduler)
        print(f"warm-up: {n} programs compiled in {time.perf_counter() - start:.1f} s", flush=True)
    app = build_app(engine, library, options, batcher, ChatTemplate.load(engine.model_dir))
    served = sorted(engine.prompts) + ([f"{options.prompts}/*"] if options.prompts else [])
    print(f"serving {', '.join(served)} on http://{options.host}:{options.port}/v1", flush=True)
    # uvicorn's SIGTERM: stop accepting, finish the requests in flight, then return
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning", timeout_graceful_shutdown=60)
    batcher.stop()
    library.close()
    return 0


SERVE = Command("serve", "serve learned prompts of one frozen model over an OpenAI-compatible HTTP API "
                "(pip install 'jaxprompt[serve]')", cmd_serve, options=(ServeOptions,), own_sigterm=True,
                arguments=(("runs", "a run directory, or NAME=RUN_DIR (the name defaults to the directory's)", "*"),))
