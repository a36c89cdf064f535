"""Many devices and many hosts: how a step is spread, how processes join, what a step needs.

    distributed.py multi-process runs through `jax.distributed`; process 0 writes
    preemption.py  SIGTERM / SIGINT / JAX's preemption notice: every process stops at one step
    watchdog.py    a lost process: the others end in one line before JAX's runtime aborts them
    strategies.py  data parallel (`pmap`) or a (data, model) mesh with the frozen weights sharded
    plan.py        per-device memory of a step, compiled from shapes alone (`jaxprompt plan`)
    collectives.py bytes each device's collectives send, read from the compiled HLO

`distributed.py`, `preemption.py` and `watchdog.py` sit below everything (they import only the
settings and each other); the strategies and the plan wrap the training step (`training.step`), and
the training loop drives the strategies.

May import: jaxprompt.training.step, jaxprompt.training.optim, jaxprompt.models, jaxprompt.data,
jaxprompt.prompts, jaxprompt.config, jaxprompt.precision, jaxprompt.settings.
"""
