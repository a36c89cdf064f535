"""The command line: `jaxprompt train | eval | generate | inspect | export | import | tasks | sweep | plan
| serve | lm-eval`.

`main.py` builds the parser from the commands' settings and is the one way a command ends (bad input:
one line and exit 2); each command is a module here, its options beside the function that runs it.
A command imports JAX and the library inside its function, so `--help`, `jaxprompt tasks` and a
refused flag answer without loading JAX.

May import: jaxprompt.training, jaxprompt.serving, jaxprompt.evaluation, jaxprompt.inference,
jaxprompt.runs, jaxprompt.parallel, jaxprompt.session, jaxprompt.models, jaxprompt.data,
jaxprompt.prompts, jaxprompt.config, jaxprompt.settings, jaxprompt.files, jaxprompt.paths
(nothing imports the command line).
"""

import os
import signal
import sys
import threading

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """The command line's entry point. Ctrl-C or SIGTERM while the command line's own modules are
    still being imported, or its arguments read, ends it in one line (exit 130 or 143), as
    `main.signal_guard` does once the command runs."""
    args = sys.argv[1:] if argv is None else argv
    command = next((a for a in args if not a.startswith("-")), "")
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {}
    if threading.current_thread() is threading.main_thread():

        def _starting(signum, frame):
            word = "interrupted" if signum == signal.SIGINT else "terminated"
            os.write(2, f"jaxprompt {command}: {word}\n".encode())
            os._exit(128 + signum)

        previous = {s: signal.signal(s, _starting) for s in handled}
    try:  # until the command's own guard takes the signals over
        from jaxprompt.cli.main import main as run

        return run(argv)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
