"""What every command shares: its declaration (`Command`), its error, and reading its options.

A command is a function of the parsed arguments returning an exit code, declared with the
settings dataclasses whose flags it takes; cli.py builds the parser from the declarations.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Callable

from jaxprompt.settings import Settings, build, leaves


class CLIError(ValueError):
    """Bad input that no single setting names (one line on stderr, exit code 2)."""


@dataclasses.dataclass(frozen=True)
class Command:
    """`jaxprompt NAME`: `run(args)` returns the exit code.

    `options`: the settings dataclasses whose leaves become flags, each a class or a
    (class, flat names) pair for some of its settings only; `arguments`: positional
    (name, help) pairs, or (name, help, nargs) triples. Every command ends on SIGINT and SIGTERM in
    one line (main.signal_guard), but one that declares `own_sigterm` handles SIGTERM itself."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    options: tuple[type[Settings] | tuple[type[Settings], tuple[str, ...]], ...] = ()
    arguments: tuple[tuple[str, ...], ...] = ()
    own_sigterm: bool = False  # the command ends on SIGTERM in its own way (serve: the requests in flight first)


def given(args: argparse.Namespace, cls: type[Settings]) -> dict:
    """The flags of `cls` given on the command line, by flat name."""
    values = {flat: getattr(args, flat) for _, flat, *_ in leaves(cls) if hasattr(args, flat)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}  # repeated flags


def settings(args: argparse.Namespace, cls: type[Settings], base=None):
    """`cls` from the flags given (the rest from `base`, or the defaults)."""
    return build(cls, given(args, cls), base)


# What the last line of a command that ends early adds once the command has a run to speak of:
# what the run keeps and how to continue it (set by `jaxprompt train`; main.signal_guard and the
# watchdog of a lost process print it). A function: the step the run keeps changes as it trains.
def no_note() -> str:
    return ""


ending_note: dict[str, Callable[[], str]] = {"note": no_note}
