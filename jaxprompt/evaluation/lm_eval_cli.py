"""`jaxprompt-lm-eval` (or `python -m jaxprompt.evaluation.lm_eval_cli`): lm-eval's own command
line, every argument and subcommand its own, with jaxprompt registered as `--model jaxprompt`:

    jaxprompt-lm-eval --model jaxprompt --model_args run=checkpoints/run,member=0 --tasks hellaswag

lm-eval 0.4 resolves `--model` in its registry before any other package's code runs, and its
command line imports no plugins; this is that command line after `JaxPromptLM` is registered.
lm-eval versions that discover models through the `lm_eval.models` entry point (declared in
pyproject.toml) find `--model jaxprompt` from plain `lm_eval` as well.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from lm_eval.__main__ import cli_evaluate

    from jaxprompt.evaluation.lm_eval import JaxPromptLM  # noqa: F401  (made and registered as "jaxprompt")

    if argv is not None:
        sys.argv = ["lm-eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
