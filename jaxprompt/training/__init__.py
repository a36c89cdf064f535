"""Training a prompt: the pure step, the loop, optimizers, populations, sweeps, tracking, the curve.

    step.py        `TrainState` and the pure step: gradients for the prompt only, micro-batches summed
    optim.py       Optax optimizers partitioned over the prompt's parts
    loop.py        steps, validation, early stopping, checkpoints, metrics, the NaN guard
    population.py  K prompts in one compiled step (`--seeds`)
    choices.py     training on choice tasks (`--loss choices`)
    run.py         a run end to end: build, train, evaluate learned vs written, write the directory
    sweep.py       Optuna searches over prompt length, rate, initialiser and seed
    tracking.py    TensorBoard / Weights & Biases mirrors of metrics.jsonl
    curve.py       the training curve

May import: jaxprompt.evaluation, jaxprompt.runs, jaxprompt.parallel, jaxprompt.session, jaxprompt.models,
jaxprompt.data, jaxprompt.prompts, jaxprompt.config, jaxprompt.precision, jaxprompt.settings,
jaxprompt.files, jaxprompt.paths (never serving or the command line).
"""
