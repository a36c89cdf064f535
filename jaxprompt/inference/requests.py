"""What crosses into the inference engine and back: a `Request` (a served prompt's name, an input,
its `Sampling`), a `Completion`, and the errors a request can meet (`RequestError`).

`parse_input` reads a request's text into the fields of the prompt's template.
"""
from __future__ import annotations

import dataclasses
import json

from jaxprompt.inference.sampling import Sampling

# fewest new tokens a batch is compiled for: each row stops at its own max_tokens inside the decode
# loop, so requests asking 1..16 tokens share one compiled program
MIN_NEW_TOKENS = 16
# fewest input positions a batch is compiled for (left padding, masked): short requests of any
# length share one program, which `Engine.warm_up` compiles
MIN_INPUT_TOKENS = 32


class RequestError(ValueError):
    """A request that cannot be served (unknown prompt, input that does not fit): one line saying why."""


@dataclasses.dataclass(frozen=True)
class Request:
    prompt: str  # a served prompt's name
    text: str = ""  # the input: parsed into the template's fields (`parse_input`), or used as is (`raw`)
    row: dict | None = None  # or the template's fields themselves
    sampling: Sampling = Sampling()
    raw: bool = False  # no template: the text's tokens alone, after the prompt (`Served.leading_virtual`)
    key: int = 0  # folded into the seed: row j of a list request samples with (seed, j)
    ids: tuple[int, ...] | None = None  # raw: token ids in place of the text (no BOS added)


@dataclasses.dataclass
class Completion:
    tokens: list[int]  # generated ids (no EOS, nothing past a stop string)
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (max_tokens or the position table)
    prompt_tokens: int  # input positions (template text and virtual tokens; prefix keys/values not counted)
    logprobs: list[float] | None = None  # of each generated token, under the model (temperature 1)
    top_logprobs: list[dict[str, float]] | None = None
    token_texts: list[str] = dataclasses.field(default_factory=list)  # each token's share of `text`

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)

    def pieces(self) -> list[str]:
        """`text` in token-sized pieces (what a stream sends), joined back exactly."""
        pieces = [p for p in self.token_texts if p]
        return pieces if "".join(pieces) == self.text else [self.text]

    def offsets(self, start: int = 0) -> list[int]:
        out, at = [], start
        for piece in self.token_texts:
            out.append(at)
            at += len(piece)
        return out


def parse_input(task, text: str) -> dict:
    """`word1=hot;...`, a JSON object, or a bare value for the task's single input field."""
    inputs = [f for f in task.fields if f not in task.template.target_fields]
    text = text.strip()
    if text.startswith("{"):
        try:
            row = json.loads(text)
        except ValueError:
            raise RequestError(f"input {text!r} is not a JSON object") from None
        if not isinstance(row, dict):
            raise RequestError(f"input {text!r} is not a JSON object")
    elif "=" in text and text.split("=", 1)[0] in inputs:
        row = dict(part.split("=", 1) for part in text.split(";") if "=" in part)
    elif len(inputs) == 1:
        row = {inputs[0]: text}
    else:
        raise RequestError(f"give the fields {', '.join(inputs)} as 'field=value;field=value' or JSON")
    missing = [f for f in inputs if f not in row]
    if missing:
        raise RequestError(f"input {text!r} lacks field {missing[0]!r}")
    return {**{f: "" for f in task.template.target_fields}, **row}


def prompt_comes_first(task, length: int) -> bool:
    """Whether the task's template has one prompt slot, before any text (`{prompt} ...`)."""
    pieces = task.template.pieces({f: "" for f in task.fields}, length)
    return isinstance(pieces[0], int) and sum(isinstance(p, int) for p in pieces) == 1
