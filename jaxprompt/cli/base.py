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
    (name, help) pairs, or (name, help, nargs) triples."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    options: tuple[type[Settings] | tuple[type[Settings], tuple[str, ...]], ...] = ()
    arguments: tuple[tuple[str, ...], ...] = ()


def given(args: argparse.Namespace, cls: type[Settings]) -> dict:
    """The flags of `cls` given on the command line, by flat name."""
    values = {flat: getattr(args, flat) for _, flat, *_ in leaves(cls) if hasattr(args, flat)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}  # repeated flags


def settings(args: argparse.Namespace, cls: type[Settings], base=None):
    """`cls` from the flags given (the rest from `base`, or the defaults)."""
    return build(cls, given(args, cls), base)


# A line Ctrl-C adds to its message once a command has something to say (cli.interrupt_guard).
interrupt_note = {"text": ""}
