"""The commands of `jaxprompt`, one module each: the command's options (a settings dataclass)
beside the function that runs it, and one `Command` that cli.py registers.

A command module imports JAX and the library inside its function, so `--help`, `jaxprompt tasks`
and a refused flag answer without loading JAX.
"""
