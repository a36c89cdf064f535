"""Templates -> token ids with prompt slots and a target mask.

A template such as `Here are two {prompt} {word1} and` with target ` {word2}` becomes

    tokens  [Here, are, two, _, _, ..., _, hot, and, cold]
    slots   [-1,   -1,  -1,  0, 1, ..., P-1, -1, -1, -1]   (-1: a real token)
    target  the trailing ` cold` tokens (the only positions the loss sees)

`{prompt}` takes the method's prompt length; `{prompt:N}` a slot of N virtual tokens. Several slots
number their virtual tokens consecutively. The space before a `{prompt}` is dropped (the virtual
tokens carry no text); the space after it stays with the next word, as GPT-2 tokenises. A method
that takes no positions (prefix tuning, adaption prompts) leaves `{prompt}` empty.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Sequence

from jaxprompt.data.tokenizer import Tokenizer

PROMPT = "prompt"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(\d+))?\}")


class TemplateError(ValueError):
    """A template, example or dataset that cannot be turned into training data."""


@dataclasses.dataclass(frozen=True)
class Template:
    text: str  # input, with {field} and {prompt} placeholders
    target: str  # what the model should produce, with {field} placeholders

    def __post_init__(self):
        for key, part in (("template", self.text), ("target", self.target)):
            if not isinstance(part, str):
                raise TemplateError(f"the {key} must be a string, got {part!r}")
        for m in _PLACEHOLDER.finditer(self.text):
            if m.group(1) == PROMPT and m.group(2) is not None and int(m.group(2)) < 1:
                raise TemplateError(f"{m.group(0)} in {self.text!r}: a prompt slot needs at least 1 virtual token")
        for part in (self.text, self.target):
            stray = _PLACEHOLDER.sub("", part)
            if "{" in stray or "}" in stray:
                raise TemplateError(f"malformed placeholder in {part!r}: use {{field}} or {{prompt}} / {{prompt:N}}")
        if PROMPT in self._names(self.target):
            raise TemplateError(f"the target {self.target!r} cannot contain {{prompt}}")
        if not self._names(self.target):
            raise TemplateError(f"the target {self.target!r} uses no field: nothing for the model to learn")

    @staticmethod
    def _names(part: str) -> list[str]:
        return [m.group(1) for m in _PLACEHOLDER.finditer(part)]

    @property
    def fields(self) -> tuple[str, ...]:
        """Example fields the template reads, in order of first use."""
        names = [n for n in self._names(self.text) + self._names(self.target) if n != PROMPT]
        return tuple(dict.fromkeys(names))

    @property
    def target_fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self._names(self.target)))

    @property
    def has_prompt(self) -> bool:
        return PROMPT in self._names(self.text)

    def require_prompt(self) -> None:
        if not self.has_prompt:
            raise TemplateError(
                f"template {self.text!r} has no {{prompt}} placeholder: write where the learned prompt goes, "
                "e.g. 'Here are two {prompt} {word1} and'"
            )

    def check_example(self, example: dict) -> None:
        missing = [f for f in self.fields if f not in example]
        if missing:
            raise TemplateError(
                f"example has no field {missing[0]!r} used by the template (example fields: {', '.join(example)})"
            )

    def pieces(self, example: dict, prompt_length: int, virtual: bool = True) -> list[str | int]:
        """The input as text pieces and prompt slots (ints: number of virtual tokens).

        `virtual=False` leaves the slots out (prefix tuning: the prompt lives in keys/values).
        """
        self.check_example(example)
        return _pieces(self.text, example, prompt_length, virtual)

    def render_target(self, example: dict) -> str:
        self.check_example(example)
        return _PLACEHOLDER.sub(lambda m: str(example[m.group(1)]), self.target)

    def render_hard(self, example: dict, prompt_text: str) -> str:
        """The input with a written prompt in place of every {prompt} (the hard-prompt baseline)."""
        self.check_example(example)
        return _PLACEHOLDER.sub(lambda m: prompt_text if m.group(1) == PROMPT else str(example[m.group(1)]),
                                self.text)

    def n_virtual(self, prompt_length: int) -> int:
        """Total virtual tokens over all {prompt} slots."""
        return sum(int(m.group(2)) if m.group(2) else prompt_length
                   for m in _PLACEHOLDER.finditer(self.text) if m.group(1) == PROMPT)


def _pieces(text: str, example: dict, prompt_length: int, virtual: bool = True) -> list[str | int]:
    out: list[str | int] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        literal = text[pos:m.start()]
        if m.group(1) == PROMPT:
            out.append(literal[:-1] if literal.endswith(" ") else literal)
            if virtual:
                out.append(int(m.group(2)) if m.group(2) else prompt_length)
        else:
            out.append(literal + str(example[m.group(1)]))
        pos = m.end()
    out.append(text[pos:])
    return _merge_text(out)


def _merge_text(pieces: list[str | int]) -> list[str | int]:
    out: list[str | int] = []
    for p in pieces:
        if isinstance(p, str) and out and isinstance(out[-1], str):
            out[-1] += p
        elif p != "":
            out.append(p)
    return out


@dataclasses.dataclass
class Encoded:
    """One example as token ids. `slots[t] >= 0` marks virtual token `slots[t]`; the last
    `n_target` tokens are the target."""

    tokens: list[int]
    slots: list[int]
    n_target: int
    task_id: int = 0

    def __len__(self) -> int:
        return len(self.tokens)


def encode_pieces(pieces: Sequence[str | int], tokenizer: Tokenizer, pad_id: int) -> tuple[list[int], list[int]]:
    """Token ids and slot indices. A BOS-adding tokenizer (OPT) gets BOS before the first text, so a
    template that starts with {prompt} reads [virtual tokens, BOS, text], PEFT's layout."""
    tokens: list[int] = []
    slots: list[int] = []
    bos = tokenizer.bos_token_id if tokenizer.add_bos else None
    n_virtual = 0
    for piece in pieces:
        if isinstance(piece, str) and bos is not None:
            tokens.append(bos)
            slots.append(-1)
            bos = None
        if isinstance(piece, int):
            tokens.extend([pad_id] * piece)
            slots.extend(range(n_virtual, n_virtual + piece))
            n_virtual += piece
        else:
            ids = tokenizer.encode(piece)
            tokens.extend(ids)
            slots.extend([-1] * len(ids))
    return tokens, slots


def encode(
    template: Template,
    example: dict,
    tokenizer: Tokenizer,
    method,
    *,
    hard_prompt: str | None = None,
    with_target: bool = True,
    task_id: int = 0,
) -> Encoded:
    """An example as ids for `method` (a prompt method: its `length`, and whether its virtual tokens
    take the template's `{prompt}` positions; prefix tuning and adaption prompts take none, so the
    slot stays empty). `None`, or a `hard_prompt` (the written prompt's text in place of {prompt}):
    the text alone."""
    if isinstance(method, int) or (method is not None and not hasattr(method, "takes_positions")):
        raise TypeError(f"encode takes the prompt method (its length, and whether its virtual tokens take "
                        f"positions), not {method!r}")
    pad = tokenizer.eos_token_id or 0
    if hard_prompt is not None:
        pieces = [template.render_hard(example, hard_prompt)]
    else:
        takes = method is not None and method.takes_positions
        pieces = template.pieces(example, method.length if takes else 0, virtual=takes)
    tokens, slots = encode_pieces(pieces, tokenizer, pad)
    n_target = 0
    if with_target:
        target = tokenizer.encode(template.render_target(example))
        if not target:
            raise TemplateError(f"the target of example {example} is empty")
        tokens += target
        slots += [-1] * len(target)
        n_target = len(target)
    return Encoded(tokens, slots, n_target, task_id)


def common_prefix_length(examples: Sequence[Encoded]) -> int:
    """Leading positions (tokens and slots) identical in every example, stopping before any
    position whose output predicts a target: the part a right-padded batch can compute once."""
    if not examples:
        return 0
    first = examples[0]
    limit = min(len(e) - e.n_target for e in examples) - 1
    n = 0
    while n < limit and all(e.tokens[n] == first.tokens[n] and e.slots[n] == first.slots[n] for e in examples):
        n += 1
    return n


def check_positions(examples: Iterable[Encoded], max_positions: int, prefix: int = 0, new_tokens: int = 0) -> None:
    """Raises unless the longest example, after `prefix` prompt positions and with `new_tokens` to
    generate, fits the model's position table (past it, position ids would be silently clamped)."""
    longest = max((len(e) for e in examples), default=0)
    needed = prefix + longest + new_tokens
    if needed > max_positions and not (prefix or new_tokens):
        raise TemplateError(f"input of {longest} tokens is longer than the model's {max_positions} positions")
    if needed > max_positions:
        parts = [f"input of {longest} tokens"]
        if prefix:
            parts.append(f"{prefix} prefix positions")
        if new_tokens:
            parts.append(f"{new_tokens} new tokens")
        raise TemplateError(f"{' + '.join(parts)} needs {needed} positions; the model has {max_positions}")
