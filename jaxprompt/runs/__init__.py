"""A run on disk: its directory, its checkpoints, reading it back, and PEFT export and import.

    layout.py      the run directory: files, lock, refuse / resume / overwrite, run.json
    checkpoint.py  Orbax checkpoints of the train state, last and best committed together
    load.py        a run's settings, model and prompt, read back (nothing from training)
    export.py      a prompt to PyTorch: PEFT adapters and plain tensors
    peft_import.py a PEFT prompt adapter as a run

May import: jaxprompt.config, jaxprompt.session, jaxprompt.models, jaxprompt.data,
jaxprompt.prompts, jaxprompt.parallel.distributed, jaxprompt.settings, jaxprompt.files,
jaxprompt.paths, jaxprompt (its version) (never training).
"""
