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

from jaxprompt.cli.main import main

__all__ = ["main"]
