"""`jaxprompt train | eval | generate | inspect | export | import | tasks | sweep | plan | serve | lm-eval`: the parser
and the one way a command ends.

Each command is a module of jaxprompt/cli/ (its options beside the function that runs it),
registered in `COMMANDS` below. Every option is generated from a settings dataclass (its default,
help text and allowed values: jaxprompt/settings.py), so the CLI and the Python API cannot drift apart, and
every value is checked before anything runs. Bad input ends in one line on stderr and exit code 2, never a traceback;
Ctrl-C (SIGINT) and SIGTERM in one line and exit code 130 or 143: during training steps after
committing a checkpoint of the step they stop at, anywhere else at once with the run's last
committed checkpoint kept. A lost process of a multi-process run ends the others in one line and
exit code 75 (parallel/watchdog.py). docs/fault-tolerance.md says it for users.

Commands import what they use when they run: `--help`, `jaxprompt tasks` and a refused flag
answer without loading JAX.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import typing

from jaxprompt.cli.base import CLIError, Command, ending_note, no_note
from jaxprompt.cli.compile_cache import compilation_cache
from jaxprompt.cli.eval import EVAL
from jaxprompt.cli.export import EXPORT, IMPORT
from jaxprompt.cli.generate import GENERATE
from jaxprompt.cli.inspect import INSPECT
from jaxprompt.cli.lm_eval import LM_EVAL
from jaxprompt.cli.plan import PLAN
from jaxprompt.cli.serve import SERVE
from jaxprompt.cli.sweep import SWEEP
from jaxprompt.cli.tasks import TASKS
from jaxprompt.cli.train import TRAIN
from jaxprompt.parallel import preemption, watchdog
from jaxprompt.settings import SettingError, Settings, allowed, get, leaves, parse_text

PROG = "jaxprompt"

# `jaxprompt --help` lists them in this order; a new command is a module of commands/ and a line here
COMMANDS: tuple[Command, ...] = (TRAIN, EVAL, GENERATE, INSPECT, EXPORT, IMPORT, TASKS, SWEEP, PLAN, SERVE, LM_EVAL)

__all__ = ["CLIError", "COMMANDS", "build_parser", "main"]


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (exit 2) like every other bad input."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


# ---- options generated from the settings dataclasses ---------------------------------------------

def _converter(flag: str, hint, meta):
    def convert(text: str):
        try:
            return parse_text(text, hint)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed(hint, meta)}") from None

    convert.__name__ = flag  # argparse names the converter in some messages
    return convert


def add_settings(parser: argparse.ArgumentParser, cls: type[Settings], only: tuple[str, ...] | None = None) -> None:
    """A flag per leaf setting of `cls` (or of those named in `only`, by flat name); its help states
    meaning, default and allowed values.

    Defaults are left out of the namespace (SUPPRESS), so a command knows which flags were given."""
    for path, flat, f, hint, owner in leaves(cls):
        if only is not None and flat not in only:
            continue
        meta = f.metadata
        flag = "--" + flat.replace("_", "-")
        names = [flag, *("--" + a.replace("_", "-") for a in meta.get("aliases", ()))]
        default = meta.get("shown_default") or _shown(get(cls(), path))
        text = f"{meta['help']} (default: {default}; {allowed(hint, meta)})".replace("%", "%%")
        common = dict(dest=flat, default=argparse.SUPPRESS, help=text)
        if hint is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, **common)
        elif meta.get("repeat"):
            element = typing.get_args(hint)[0]
            parser.add_argument(*names, action="append", type=_converter(flag, element, meta), metavar="TEXT",
                                **common)
        else:
            parser.add_argument(*names, type=_converter(flag, hint, meta), metavar=flat.upper(), **common)


def _shown(value) -> str:
    if isinstance(value, tuple):
        return ",".join(_shown(v) if not isinstance(v, tuple) else "=".join(map(str, v)) for v in value) or "none"
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


# ---- SIGINT (Ctrl-C) and SIGTERM --------------------------------------------------------------------

@contextlib.contextmanager
def signal_guard(command: str, sigterm: bool = True):
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler's stop; unless `sigterm` is False: a command that
    handles it itself) end a command in one line, exit code 130 or 143.

    During training steps the loop takes the first one (parallel/preemption.py): it stops at the
    step boundary, commits that step, and the train command says so. Anywhere else (loading,
    compiling, evaluating), and for a second signal while that checkpoint is written, the command
    ends at once: the signal's wake-up byte is read by a watcher thread, which does not wait for
    the main thread to return to Python (it may be inside XLA for minutes). Every file jaxprompt
    writes is atomic and checkpoints are committed by one rename, so stopping anywhere keeps the
    last commit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    handled = (signal.SIGINT, signal.SIGTERM) if sigterm else (signal.SIGINT,)
    previous = {s: signal.signal(s, lambda *_: None) for s in handled}  # the watcher acts
    if not sigterm:  # the command installs its own; it starts from the default (the process ends)
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def watch():
        while True:
            data = os.read(read_fd, 1)
            if not data:  # the guard was closed
                os.close(read_fd)
                return
            if data[0] not in handled or preemption.take(data[0]):
                continue  # the training loop stops at its next step boundary
            word = "interrupted" if data[0] == signal.SIGINT else "terminated"
            again = " again, before the step it was stopping at was saved" if preemption.taken() else ""
            try:
                note = ending_note["note"]()
            except Exception:  # the run's record could not be read: the line without it
                note = ""
            os.write(2, f"{PROG} {command}: {word}{again}{note}\n".encode())
            os._exit(preemption.EXIT_CODES[data[0]])

    threading.Thread(target=watch, name="jaxprompt-signals", daemon=True).start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.close(write_fd)  # ends the watcher
        ending_note["note"] = no_note


# ---- the parser ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Learn prompts by backpropagation against frozen LMs.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        q = sub.add_parser(command.name, help=command.help)
        for name, help, *nargs in command.arguments:
            q.add_argument(name, help=help, **({"nargs": nargs[0], "metavar": name.upper()[:-1]} if nargs else {}))
        for options in command.options:
            cls, only = options if isinstance(options, tuple) else (options, None)
            add_settings(q, cls, only)
        q.set_defaults(fn=command.run, own_sigterm=command.own_sigterm)
    return p


def _errors() -> tuple[type[BaseException], ...]:
    """What bad input raises: reported in one line. Anything else is a bug and keeps its traceback."""
    from jaxprompt.data.templates import TemplateError
    from jaxprompt.data.tokenizer import TokenizerError
    from jaxprompt.files import LockedError
    from jaxprompt.inference.requests import RequestError
    from jaxprompt.models.convert import CheckpointError
    from jaxprompt.models.model_config import ConfigError
    from jaxprompt.parallel.distributed import DistributedError
    from jaxprompt.runs.export import ExportError
    from jaxprompt.runs.layout import RunError
    from jaxprompt.training.loop import NonFiniteLossError

    return (CLIError, SettingError, TemplateError, ConfigError, CheckpointError, TokenizerError,
            NonFiniteLossError, RunError, ExportError, LockedError, DistributedError, RequestError)


def _quiet_abandoned_reads() -> None:
    """Orbax's background reads of a checkpoint that cannot be read finish later against its closed
    event loop, each reported as an unraisable 'Event loop is closed': noise after the one line that
    says what failed. Every other unraisable error is reported as before."""
    previous = sys.unraisablehook
    if getattr(previous, "jaxprompt", False):
        return

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
            return
        previous(unraisable)

    hook.jaxprompt = True
    sys.unraisablehook = hook


def _os_error(e: OSError) -> str:
    where = f" ({e.filename})" if e.filename else ""
    return f"{e.strerror or type(e).__name__}{where}"


def main(argv=None) -> int:
    """Runs the command of `argv` (default: the process's own arguments) and returns its exit code.
    In the process's own command (`argv` None) a command that ended in its one line leaves stderr
    quiet after it: what runs at exit (Orbax's abandoned reads, JAX's shutdown) adds nothing."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_abandoned_reads()
    code = _run(args)
    # ended with its work done, or stopped with every process: not a process its peers lost
    watchdog.ending(normal=code in (0, *preemption.EXIT_CODES.values()))
    if code and argv is None:
        _quiet_from_here()
    return code


def _run(args) -> int:
    # a lost process of a multi-process run ends this one in this line (parallel/watchdog.py)
    watchdog.report["line"] = lambda what: f"{PROG} {args.command}: {what}{ending_note['note']()}"
    # warm starts: compiled programs kept on disk unless --no-cache (compile_cache.py)
    with signal_guard(args.command, not args.own_sigterm), compilation_cache(getattr(args, "cache", True)):
        try:
            return args.fn(args)
        except preemption.Stopped as stop:  # a command that trains without a run to resume (sweep)
            print(f"{PROG} {args.command}: {stop.cause}: stopped at step {stop.step}", file=sys.stderr)
            return stop.exit_code
        except OSError as e:  # read-only or full disk, a vanished file: the environment, in one line
            print(f"{PROG} {args.command}: error: {_os_error(e)}", file=sys.stderr)
            return 2
        except Exception as e:
            if not isinstance(e, _errors()):
                watchdog.await_verdict()  # a collective failed for a lost process: the watchdog's line ends us
                raise
            print(f"{PROG} {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)  # our own text
            return 2


def _quiet_from_here() -> None:
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # C++ logging writes to the descriptor, not to sys.stderr
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
