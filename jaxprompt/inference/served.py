"""What the engine holds per prompt (`Served`) and per admitted request (`Row`): the two values that
cross between the engine and its callers (`Engine.complete`, the scheduler, the server)."""

from __future__ import annotations

import dataclasses

from jaxprompt.data.templates import Encoded
from jaxprompt.inference.requests import Request, prompt_comes_first
from jaxprompt.inference.sampling import Sampling
from jaxprompt.models import Prefix
from jaxprompt.session import Session


@dataclasses.dataclass
class Served:
    """A prompt the engine serves: its session (template, method), its inference form, and the
    keys/values it attends to before any input (computed once)."""

    name: str
    session: Session | None  # None: the bare model, raw text only
    method: object = None  # the inference form (None: the plain text, a written prompt or none)
    prompt: dict | None = None
    hard_prompt: str | None = None  # a written prompt in place of {prompt}
    probes: tuple[Encoded, Encoded] | None = None  # the template under two different inputs
    own_prefix: Prefix | None = None  # the method's keys/values alone (prefix tuning)

    @property
    def takes_positions(self) -> bool:
        """Whether the prompt occupies input positions (virtual tokens)."""
        return self.method is not None and self.method.takes_positions

    @property
    def makes_prefix(self) -> bool:
        """Whether the prompt is keys/values every row attends to (prefix tuning)."""
        return self.method is not None and self.method.makes_prefix

    @property
    def apart(self) -> bool:
        """Whether its rows decode apart from other prompts' (LLaMA-Adapter prompts change every
        layer, not the keys/values a row attends to)."""
        return self.method is not None and self.method.adapts_layers

    @property
    def method_name(self) -> str:
        """The served form's method ("soft" for a baked p-tuning prompt), or "none" (bare, written)."""
        return "none" if self.method is None else self.method.name

    @property
    def leading_virtual(self) -> int | None:
        """Virtual tokens a raw text gets before it: none for prompts that take no positions (prefix,
        adaption, written, bare); the prompt's length for one learned first in its template
        (`{prompt} ...`, placed as PEFT places a prompt); None for one learned inside its template,
        which raw text cannot take (what would surround it is not defined)."""
        if not self.takes_positions:
            return 0
        first = prompt_comes_first(self.session.task, self.method.length)
        return self.method.length if first and self.method.n_tasks == 1 else None

    def warm_up_request(self) -> Request:
        """The shortest request this prompt takes (one token of input, one new token): what warm-ups
        compile for, and what a load computes the head of."""
        sampling = Sampling(max_tokens=1)
        if self.session is None or self.leading_virtual is not None:
            return Request(self.name, text="a", raw=True, sampling=sampling)
        task = self.session.task
        row = {f: ("" if f in task.template.target_fields else "a") for f in task.fields}
        return Request(self.name, row=row, sampling=sampling)


@dataclasses.dataclass
class Row:
    """One request ready to decode: its prompt, its input after the cached head, and the head."""

    served: Served
    tokens: list[int]  # the part after the head, left-padded into the batch
    slots: list[int]  # each token's virtual-token slot (-1: a text token)
    head: Prefix | None  # [L, 1, P, G, K]
    prompt_tokens: int
    sampling: Sampling
    key: int

    @property
    def virtual_width(self) -> int:
        """Virtual tokens after the head (a prompt placed after an input field): 0 for none."""
        return max(self.slots, default=-1) + 1
