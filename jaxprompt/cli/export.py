"""`jaxprompt export` and `jaxprompt import`: a trained prompt to PyTorch (PEFT adapter or plain
tensors), and a PEFT prompt adapter into a run directory (runs/export.py and runs/peft_import.py do the work)."""

from __future__ import annotations

import dataclasses

from jaxprompt.cli.base import Command, settings
from jaxprompt.cli.trained import RUN_DIR, LoadOptions, load
from jaxprompt.settings import Settings, setting


@dataclasses.dataclass(frozen=True)
class ExportOptions(Settings):
    to: str = setting("peft", "a PEFT adapter, or plain tensors with a JSON description of where they go",
                      choices=("peft", "plain"))


@dataclasses.dataclass(frozen=True)
class ImportOptions(Settings):
    source: str = setting("peft", "adapter format", choices=("peft",), flag="from")
    task: str = setting("antonyms", "the task the prompt is for: built-in name or task file")
    model: str | None = setting(None, "the base model", shown_default="the adapter's base_model_name_or_path")
    overwrite: bool = setting(False, "replace an existing run in OUT_DIR as a whole")


def cmd_export(args) -> int:
    from jaxprompt.runs.export import export_peft, export_plain

    export = export_peft if settings(args, ExportOptions).to == "peft" else export_plain
    session, prompt, info = load(args)
    out = export(args.out_dir, session.method, prompt, session.model, session.frozen, session.task.template,
                 base_model=info["model_dir"], tokenizer=session.tokenizer.name, task=session.task.name)
    print(f"exported to {out}")
    return 0


def cmd_import(args) -> int:
    from jaxprompt.runs.peft_import import import_peft

    opts = settings(args, ImportOptions)
    run_dir = import_peft(args.adapter_dir, args.out_dir, task=opts.task, model=opts.model, overwrite=opts.overwrite)
    print(f"imported into run directory {run_dir}")
    return 0


EXPORT = Command("export", "export a trained prompt for PyTorch (PEFT adapter or plain tensors)", cmd_export,
                 options=(LoadOptions, ExportOptions),
                 arguments=(RUN_DIR, ("out_dir", "directory the adapter or tensors are written to")))
IMPORT = Command("import", "import a PEFT prompt adapter as a jaxprompt run", cmd_import, options=(ImportOptions,),
                 arguments=(("adapter_dir", "a PEFT prompt-learning adapter directory"),
                            ("out_dir", "the run directory to create")))
