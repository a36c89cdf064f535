"""Every prompt method's settings, declared once: its defaults, help and allowed values.

Each method's class (soft.py, ptuning.py, prefix.py, adaption.py) inherits its settings class
below, so a field is declared here and nowhere else. The run's `MethodConfig` (the `--method`,
`--prompt-length`, `--init` ... flags and run.json's "method" settings) is generated from them:
one setting per field name, allowed for the methods that declare it, with each method's own
default. This module imports no JAX, so the command line can build its flags without it.

A field declared with `setting(...)` is a user's setting; a plain field (`init_ids`,
`sample_pool`, `anneal_steps`) is resolved by whoever builds the method (`build.make_method`):
from the tokenizer, the init text or the run's length.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import ClassVar

from jaxprompt.settings import AT_LEAST_0, AT_LEAST_1, POSITIVE, Range, SettingError, Settings, label, setting

INIT_NAMES = ("vocab_normal", "uniform", "sampled_vocab", "text")


def _top_layers(flag: str, what: str):
    return setting(None, f"only the top N layers get {what}", range=AT_LEAST_1, flag=flag,
                   shown_default="every layer")


@dataclasses.dataclass(frozen=True)
class PromptSettings:
    """What every method has: its length."""

    name: ClassVar[str] = ""
    length: int = setting(20, "virtual tokens per {prompt} slot (prefix tuning: keys/values per layer; adaption "
                              "prompts: vectors per layer)", range=AT_LEAST_1, flag="prompt-length")

    def __post_init__(self):
        for f in dataclasses.fields(self):  # a method's own settings are checked as the run's are
            meta, value = f.metadata, getattr(self, f.name)
            if "help" not in meta or value is None:
                continue
            if meta.get("choices") and value not in meta["choices"]:
                raise SettingError(f"{self.name} {f.name} {value!r}: must be one of {', '.join(meta['choices'])}")
            if meta.get("range") is not None and value not in meta["range"]:
                raise SettingError(f"{self.name} {f.name} {value!r}: must be {meta['range'].describe()}")


@dataclasses.dataclass(frozen=True)
class EmbeddingInitSettings:
    """How virtual token embeddings start (init.py)."""

    init_from: str = setting("vocab_normal", "how the prompt starts: the embedding table's per-dimension normal, "
                                             "uniform in [-init_scale, init_scale], random word tokens' embeddings, "
                                             "or the embeddings of --init-text", choices=INIT_NAMES, flag="init")
    init_scale: float = setting(0.5, "--init uniform: the range [-s, s]", range=POSITIVE)
    init_ids: tuple[int, ...] = ()  # token ids of the init text
    # ordinary word tokens sampled_vocab draws from (init.word_token_ids); not part of the method's
    # identity (equality, hash, repr): it only decides where training starts
    sample_pool: tuple[int, ...] = dataclasses.field(default=(), repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class SoftSettings(PromptSettings, EmbeddingInitSettings):
    name: ClassVar[str] = "soft"


@dataclasses.dataclass(frozen=True)
class PTuningSettings(PromptSettings, EmbeddingInitSettings):
    name: ClassVar[str] = "ptuning"
    encoder: str = setting("mlp", "p-tuning encoder", choices=("mlp", "lstm"))
    hidden: int = setting(128, "p-tuning encoder width", range=AT_LEAST_1, flag="encoder-hidden")


@dataclasses.dataclass(frozen=True)
class RelaxedSettings(PromptSettings, EmbeddingInitSettings):
    name: ClassVar[str] = "relaxed"
    tau_start: float = setting(1.0, "relaxed prompts: the softmax temperature at step 0 (annealed geometrically)",
                               range=POSITIVE)
    tau_end: float = setting(0.05, "relaxed prompts: the final softmax temperature (annealed from --tau-start over "
                                   "the run)", range=Range(0, 1, low_open=True))
    init_logit: float = setting(5.0, "relaxed prompts with --init text: the logit added to the text's tokens",
                                range=AT_LEAST_0)
    anneal_steps: int = 1000  # the run's steps


@dataclasses.dataclass(frozen=True)
class PezSettings(PromptSettings, EmbeddingInitSettings):
    name: ClassVar[str] = "pez"
    init_from: str = setting("sampled_vocab", EmbeddingInitSettings.__dataclass_fields__["init_from"].metadata["help"],
                             choices=INIT_NAMES, flag="init")
    metric: str = setting("cosine", "PEZ: the similarity that picks each vector's nearest token",
                          choices=("cosine", "l2"), flag="pez-metric")


@dataclasses.dataclass(frozen=True)
class PrefixSettings(PromptSettings):
    name: ClassVar[str] = "prefix"
    top_layers: int | None = _top_layers("prefix-top-layers", "a prefix")
    reparam_hidden: int | None = setting(None, "prefix tuning: width of the MLP reparameterisation", range=AT_LEAST_1,
                                         flag="prefix-reparam", shown_default="none: keys/values learned directly")
    init_from: str = setting("sampled_vocab", "how the prompt starts: the keys/values the model computes for random "
                                              "word tokens, or for --init-text", choices=("sampled_vocab", "text"),
                             flag="init")
    init_ids: tuple[int, ...] = ()  # tokens whose keys/values start the prefix (--init text), else random words
    sample_pool: tuple[int, ...] = dataclasses.field(default=(), repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class AdaptionSettings(PromptSettings):
    name: ClassVar[str] = "adaption"
    top_layers: int | None = _top_layers("adapter-layers", "gated adaption prompts (LLaMA-Adapter's top layers)")


METHOD_SETTINGS: dict[str, type[PromptSettings]] = {
    cls.name: cls for cls in (SoftSettings, PTuningSettings, PrefixSettings, RelaxedSettings, PezSettings,
                              AdaptionSettings)
}


# ---- the run's method settings, generated ----------------------------------------------------------

def _declared() -> dict[str, list[tuple[str, dataclasses.Field, typing.Any]]]:
    """Setting name -> [(method, field, type hint)] over every method that declares it."""
    out: dict[str, list] = {}
    for method, cls in METHOD_SETTINGS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if "help" in f.metadata:
                out.setdefault(f.name, []).append((method, f, hints[f.name]))
    return out


DECLARED = _declared()


class _MethodConfigRules:
    """The rules `MethodConfig` adds to its generated fields."""

    LABEL: ClassVar[str] = "--{flag}"

    def flag_in_use(self, name: str) -> str | None:
        """The flag that names setting `name` for this method (`top_layers` is --adapter-layers for
        adaption prompts, --prefix-top-layers for prefix tuning)."""
        for method, f, _ in DECLARED.get(name, ()):
            if method == self.name:
                return f.metadata.get("flag")
        return None

    def default_of(self, name: str):
        """Setting `name` as this method gets it: the value given, else the method's own default."""
        value = getattr(self, name)
        if value is not None:
            return value
        return METHOD_SETTINGS[self.name].__dataclass_fields__[name].default if name in self.settings() else None

    def settings(self) -> tuple[str, ...]:
        """The settings this method declares."""
        return tuple(n for n, owners in DECLARED.items() if any(m == self.name for m, _, _ in owners))

    def method_options(self) -> dict:
        """This method's settings with their values (the method's defaults where none was given)."""
        return {n: self.default_of(n) for n in self.settings()}

    def check(self) -> None:
        if self.init_text is not None and "init_from" not in self.settings():
            raise SettingError(f"--init-text applies to methods that can start from a text (got --method {self.name})")
        if self.init_text is not None and self.default_of("init_from") != "text":
            raise SettingError(f"--init-text needs --init text (got --init {self.default_of('init_from')})")
        for f in dataclasses.fields(self):
            owners = [m for m, _, _ in DECLARED.get(f.name, ())]
            if owners and self.name not in owners and getattr(self, f.name) is not None \
                    and getattr(self, f.name) != _union_default(f.name):
                raise SettingError(f"{label(type(self), f, self)} applies to --method {' or '.join(owners)} only "
                                   f"(got --method {self.name})")
        for name in self.settings():  # the method's own choices and ranges
            f = METHOD_SETTINGS[self.name].__dataclass_fields__[name]
            value = self.default_of(name)
            if f.metadata.get("choices") and value not in f.metadata["choices"]:
                raise SettingError(f"{label(type(self), f, self)} {value}: --method {self.name} takes one of "
                                   f"{', '.join(f.metadata['choices'])}")


def _union_default(name: str):
    """One default per setting: the methods' common default, or None (each method's own)."""
    defaults = {repr(f.default) for _, f, _ in DECLARED[name]}
    return DECLARED[name][0][1].default if len(defaults) == 1 else None


def _union_field(name: str, owners: list) -> tuple[str, typing.Any, dataclasses.Field]:
    method, first, hint = owners[0]
    default = _union_default(name)
    choices = tuple(dict.fromkeys(c for _, f, _ in owners for c in (f.metadata.get("choices") or ()))) or None
    flags = [f.metadata.get("flag") for _, f, _ in owners if f.metadata.get("flag")]
    meta = dict(first.metadata)
    help_text = meta["help"]
    shown = meta.get("shown_default")
    if default is None and any(f.default is not None for _, f, _ in owners):
        hint = hint | None
        shown = "the method's own: " + "; ".join(f"{m} {f.default}" for m, f, _ in owners)
    if len(owners) < len(METHOD_SETTINGS):
        help_text += f" [{', '.join(m for m, _, _ in owners)}]"
    flag = flags[0] if flags else None
    return name, hint, setting(default, help_text, range=meta.get("range"), choices=choices, flag=flag,
                               aliases=tuple(f for f in dict.fromkeys(flags) if f != flag), shown_default=shown)


def method_config_class() -> type:
    """`MethodConfig`: the prompt method of a run and every method's settings, generated."""
    fields = [("name", str, setting("soft", "prompt method", choices=tuple(METHOD_SETTINGS), flag="method"))]
    fields += [_union_field(name, owners) for name, owners in sorted(DECLARED.items(), key=lambda kv: kv[0] != "length")]
    fields.append(("init_text", str | None,
                   setting(None, "text whose embeddings (prefix tuning: keys/values) start the prompt (with --init text)",
                           shown_default="the task's written prompt")))
    cls = dataclasses.make_dataclass("MethodConfig", fields, bases=(_MethodConfigRules, Settings), frozen=True)
    cls.__module__ = __name__
    cls.__doc__ = ("The prompt method (prompts/) and its settings, generated from the methods' own declarations "
                   "(prompts/settings.py). A setting that not every method has applies to those that do; where "
                   "methods' defaults differ, its default is None: each method's own.")
    return cls
