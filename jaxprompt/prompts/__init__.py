"""Prompt methods: small pure functions over a prompt pytree, between `embed` and `transformer`.

    base.py        what every method provides
    soft.py        soft prompts (Lester et al.), relaxed one-hot prompts, PEZ hard prompts
    ptuning.py     p-tuning (Liu et al.): a prompt encoder
    prefix.py      prefix tuning (Li & Liang): keys/values per layer
    adaption.py    LLaMA-Adapter's gated adaption prompts
    multitask.py   one prompt per task in shared batches
    init.py        initialisers, closures over (key, shape)
    insert.py      placing virtual tokens into a sequence of embeddings
    forward.py     the frozen model run with a prompt inserted
    loss.py        the masked next-token NLL of a prompted batch
    cache.py       keys/values of shared heads, computed once per prompt, in memory and on disk

May import: jaxprompt.models, jaxprompt.data, jaxprompt.precision, jaxprompt.files,
jaxprompt.paths, jaxprompt.parallel.distributed.
"""
from __future__ import annotations

import dataclasses

from jaxprompt.prompts.adaption import AdaptionPrompt
from jaxprompt.prompts.base import EmbeddingInit, PromptMethod
from jaxprompt.prompts.multitask import MultiTask
from jaxprompt.prompts.prefix import PrefixTuning
from jaxprompt.prompts.ptuning import PTuning
from jaxprompt.prompts.soft import ProjectedPrompt, RelaxedPrompt, SoftPrompt

METHODS: dict[str, type[PromptMethod]] = {
    cls.name: cls for cls in (SoftPrompt, PTuning, PrefixTuning, RelaxedPrompt, ProjectedPrompt, AdaptionPrompt)
}


def make_method(name: str, **options) -> PromptMethod:
    """A method by name: soft | ptuning | prefix | relaxed | pez | adaption."""
    if name not in METHODS:
        raise ValueError(f"unknown prompt method {name!r}; use one of {', '.join(METHODS)}")
    return METHODS[name](**options)


def method_spec(method: PromptMethod) -> dict:
    """A method as plain data (run.json): its name and every field of its identity (not, e.g., the
    pool a random init drew from)."""
    spec = {"name": method.name}
    for f in dataclasses.fields(method):
        if not f.compare:
            continue
        value = getattr(method, f.name)
        spec[f.name] = method_spec(value) if isinstance(value, PromptMethod) else (
            list(value) if isinstance(value, tuple) else value)
    return spec


def method_from_spec(spec: dict) -> PromptMethod:
    """The inverse of `method_spec`; a spec with missing or unknown fields is an error naming them."""
    spec = dict(spec)
    name = spec.pop("name", None)
    cls = MultiTask if name == MultiTask.name else METHODS.get(name)
    if cls is None:
        raise ValueError(f"unknown prompt method {name!r}; known: {', '.join([*METHODS, MultiTask.name])}")
    fields = {f.name for f in dataclasses.fields(cls) if f.compare}  # as method_spec writes them
    if set(spec) != fields:
        odd = sorted(set(spec) ^ fields)
        raise ValueError(f"the {name} method's settings do not match this jaxprompt (field {odd[0]!r})")
    values = {k: method_from_spec(v) if isinstance(v, dict) else (tuple(v) if isinstance(v, list) else v)
              for k, v in spec.items()}
    return cls(**values)


__all__ = ["PromptMethod", "EmbeddingInit", "SoftPrompt", "PTuning", "PrefixTuning", "RelaxedPrompt", "AdaptionPrompt",
           "ProjectedPrompt", "MultiTask", "METHODS", "make_method", "method_spec", "method_from_spec"]
