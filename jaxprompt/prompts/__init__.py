"""Prompt methods: small pure functions over a prompt pytree, between `embed` and `transformer`.

    settings.py    every method's settings, declared once (no JAX: the CLI's flags come from here)
    base.py        what every method provides, and what it declares it needs
    soft.py        soft prompts (Lester et al.), relaxed one-hot prompts, PEZ hard prompts
    ptuning.py     p-tuning (Liu et al.): a prompt encoder
    prefix.py      prefix tuning (Li & Liang): keys/values per layer
    adaption.py    LLaMA-Adapter's gated adaption prompts
    multitask.py   one prompt per task in shared batches
    build.py       a method by name, from a run's settings, to and from run.json
    init.py        initialisers, closures over (key, shape)
    insert.py      placing virtual tokens into a sequence of embeddings
    forward.py     the frozen model run with a prompt inserted: logits, target log-likelihoods
    loss.py        the masked next-token NLL of a prompted batch
    cache.py       keys/values of shared heads, computed once per prompt, in memory and on disk

Names are imported from their modules when first used, so importing `prompts.settings` (the
command line) loads no JAX.

May import: jaxprompt.models, jaxprompt.data, jaxprompt.precision, jaxprompt.settings,
jaxprompt.files, jaxprompt.paths, jaxprompt.parallel.distributed.
"""

import importlib

_NAMES = {
    "PromptMethod": "base", "EmbeddingInit": "base", "PromptedInputs": "base",
    "SoftPrompt": "soft", "RelaxedPrompt": "soft", "ProjectedPrompt": "soft", "PTuning": "ptuning",
    "PrefixTuning": "prefix", "AdaptionPrompt": "adaption", "MultiTask": "multitask",
    "METHODS": "build", "make_method": "build", "method_from_config": "build", "method_spec": "build",
    "method_from_spec": "build",
}
__all__ = list(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'jaxprompt.prompts' has no attribute {name!r}")
    return getattr(importlib.import_module(f"jaxprompt.prompts.{_NAMES[name]}"), name)


def __dir__():
    return sorted(list(globals()) + __all__)
