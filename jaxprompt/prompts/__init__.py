"""Prompt methods: small pure functions over a prompt pytree, between `embed` and `transformer`."""

from __future__ import annotations

from jaxprompt.prompts.base import EmbeddingInit, PromptMethod
from jaxprompt.prompts.multitask import MultiTask
from jaxprompt.prompts.prefix import PrefixTuning
from jaxprompt.prompts.ptuning import PTuning
from jaxprompt.prompts.soft import ProjectedPrompt, RelaxedPrompt, SoftPrompt

METHODS: dict[str, type[PromptMethod]] = {
    cls.name: cls for cls in (SoftPrompt, PTuning, PrefixTuning, RelaxedPrompt, ProjectedPrompt)
}


def make_method(name: str, **options) -> PromptMethod:
    """A method by name: soft | ptuning | prefix | relaxed | pez."""
    if name not in METHODS:
        raise ValueError(f"unknown prompt method {name!r}; use one of {', '.join(METHODS)}")
    return METHODS[name](**options)


__all__ = ["PromptMethod", "EmbeddingInit", "SoftPrompt", "PTuning", "PrefixTuning", "RelaxedPrompt",
           "ProjectedPrompt", "MultiTask", "METHODS", "make_method"]
