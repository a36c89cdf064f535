"""`jaxprompt tasks`: the built-in tasks (data/tasks.py)."""

from __future__ import annotations

from jaxprompt.cli.base import Command


def cmd_tasks(args) -> int:
    from jaxprompt.data.tasks import BUILTIN

    width = max(map(len, BUILTIN)) + 2
    for name, task in BUILTIN.items():
        print(f"{name:<{width}}{task.template.text!r} -> {task.template.target!r}  written prompt: {task.hard_prompt!r}")
        print(f"{'':<{width}}{task.description}")
    return 0


TASKS = Command("tasks", "list the built-in tasks", cmd_tasks)
