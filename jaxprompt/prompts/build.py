"""Building a prompt method: by name with its settings (as the command line builds it), from a
run's `MethodConfig`, and to and from run.json's plain data."""

from __future__ import annotations

import dataclasses

from jaxprompt.prompts.adaption import AdaptionPrompt
from jaxprompt.prompts.base import PromptMethod
from jaxprompt.prompts.init import word_token_ids
from jaxprompt.prompts.multitask import MultiTask
from jaxprompt.prompts.prefix import PrefixTuning
from jaxprompt.prompts.ptuning import PTuning
from jaxprompt.prompts.settings import METHOD_SETTINGS
from jaxprompt.prompts.soft import ProjectedPrompt, RelaxedPrompt, SoftPrompt
from jaxprompt.settings import SettingError

METHODS: dict[str, type[PromptMethod]] = {
    cls.name: cls for cls in (SoftPrompt, PTuning, PrefixTuning, RelaxedPrompt, ProjectedPrompt, AdaptionPrompt)
}
assert list(METHODS) == list(METHOD_SETTINGS), "every method's settings class has its method"


def make_method(name: str = "soft", *, tokenizer=None, init_text: str | None = None, steps: int | None = None,
                n_tasks: int = 1, **settings) -> PromptMethod:
    """A prompt method as `jaxprompt train` builds it: `settings` by their names (`length`,
    `init_from`, `hidden`, `top_layers`, ...: prompts/settings.py), each method's own defaults for
    the rest, and what the settings leave to the run resolved as the run resolves it:

    - `init_from="text"` starts from the embeddings (prefix tuning: the keys/values) of
      `init_text`, tokenised with `tokenizer`;
    - a method that starts from random tokens (`init_from="sampled_vocab"`: PEZ's default, prefix
      tuning's) draws them from the ordinary words of `tokenizer`'s vocabulary;
    - a relaxed prompt anneals its temperature over `steps`;
    - `n_tasks > 1` gives one prompt per task (multi-task batches).

    What is needed and missing is refused, so a method built here starts where the command line's
    would. (A method's class with its fields, e.g. `SoftPrompt(length=8)`, is the unresolved form.)"""
    if name not in METHODS:
        raise SettingError(f"unknown prompt method {name!r}; use one of {', '.join(METHODS)}")
    cls = METHODS[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise SettingError(f"the {name} method has no setting {unknown[0]!r}; its settings: "
                         f"{', '.join(n for n, f in fields.items() if 'help' in f.metadata)}")
    values = dict(settings)
    init_from = values.get("init_from", fields["init_from"].default if "init_from" in fields else None)
    if init_from == "text" and "init_ids" not in values:
        if tokenizer is None or init_text is None:
            raise SettingError(f"init_from='text' starts the {name} prompt from a text: pass init_text= and tokenizer=")
        values["init_ids"] = tuple(tokenizer.encode(" " + init_text.strip()))
        if not values["init_ids"]:
            raise SettingError(f"the init text {init_text!r} encodes to no tokens")
    elif init_text is not None and init_from != "text":
        raise SettingError(f"init_text= needs init_from='text' (the {name} method starts from {init_from})")
    draws_tokens = init_from == "sampled_vocab" and not values.get("reparam_hidden")
    if draws_tokens and "sample_pool" not in values:
        if tokenizer is None:
            raise SettingError(f"the {name} prompt starts from random word tokens of the vocabulary: pass tokenizer=")
        values["sample_pool"] = word_token_ids(tokenizer)  # never bytes, specials or unused slots
    if "anneal_steps" in fields and "anneal_steps" not in values:
        if steps is None:
            raise SettingError(f"a {name} prompt anneals its temperature over the run: pass steps=")
        values["anneal_steps"] = steps
    method = cls(**values)
    return MultiTask(base=method, n_tasks=n_tasks) if n_tasks > 1 else method


def method_from_config(config, tokenizer, task, steps: int, n_tasks: int = 1) -> PromptMethod:
    """The method a run's `MethodConfig` describes, on this tokenizer; `init_text` defaults to the
    task's written prompt (its name where it has none)."""
    options = config.method_options()
    text = None
    if options.get("init_from") == "text":
        text = config.init_text if config.init_text is not None else (task.hard_prompt or task.name)
    return make_method(config.name, tokenizer=tokenizer, init_text=text, steps=steps, n_tasks=n_tasks, **options)


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
