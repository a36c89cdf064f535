"""What every prompt method provides.

A method is a frozen (hashable) dataclass of settings (declared in settings.py); the learned state
is a separate pytree ("the prompt") that the method creates (`init`) and reads. A method declares
what it needs from the model and the template, and callers read those declarations, never its name:

    takes_positions  its virtual tokens fill the template's `{prompt}` slots (soft, p-tuning,
                     relaxed, PEZ): `insert.py` places them between `embed` and `transformer`
    makes_prefix     keys/values every layer attends to before the input (prefix tuning)
    adapts_layers    gated prompts read inside the adapted layers (LLaMA-Adapter): rows of different
                     such prompts cannot share a batch

Behaviour that differs between methods is a method of the method: `inputs` (what the transformer
reads for a batch), `inference_prompt` (the one form every consumer scores, generates and exports),
`batch_virtual_tokens` / `batch_prefix` (one prompt, or one per example for multi-task),
`per_example`, `prefix_positions`, `task_view`, `peft_config` and `peft_incompatibility`.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxprompt.data.templates import Template
from jaxprompt.models import Model, Prefix
from jaxprompt.models.layers.attention import Adapter
from jaxprompt.precision import policy_of
from jaxprompt.prompts import init as inits
from jaxprompt.prompts.insert import insert_batch


class PromptedInputs(NamedTuple):
    """What the transformer reads for a prompted batch: token embeddings with any virtual tokens in
    place, and the method's keys/values (prefix tuning) or adaption prompts (LLaMA-Adapter)."""

    embeds: Float[Array, "B T E"]
    prefix: Prefix | None = None
    adapter: Adapter | None = None


class PromptMethod:
    """The behaviour every method shares; a method's class adds its settings (settings.py) and
    what is its own (`init`, `virtual_tokens` or `prefix` or `adapter`)."""

    name: ClassVar[str] = ""
    length: int
    takes_positions: ClassVar[bool] = True
    makes_prefix: ClassVar[bool] = False
    adapts_layers: ClassVar[bool] = False

    def init(self, key: jax.Array, model: Model, frozen: dict, n_virtual: int) -> dict:
        """The prompt pytree (fp32). `n_virtual` is the template's total of virtual tokens."""
        raise NotImplementedError

    def virtual_tokens(self, prompt: dict, model: Model, frozen: dict, step) -> Float[Array, "N E"]:
        raise NotImplementedError

    def prefix(self, prompt: dict, model: Model, frozen: dict, step
               ) -> tuple[Float[Array, "L P H K"], Float[Array, "L P H K"], Bool[Array, "L"]]:
        """Keys, values, and which layers use them."""
        raise NotImplementedError

    def adapter(self, prompt: dict, model: Model, frozen: dict) -> Adapter:
        """Every layer's adaption prompt and gate."""
        raise NotImplementedError

    def inference_prompt(self, prompt: dict, model: Model, frozen: dict) -> tuple["PromptMethod", dict]:
        """The (method, prompt) that evaluation, generation, the prompt cache and export all use: its
        virtual tokens or keys/values no longer depend on the training step (an encoder baked into
        plain embeddings, a relaxed prompt at its final temperature). Traceable, so validation during
        training scores this same form."""
        return self, prompt

    # ---- what a batch sees ---------------------------------------------------------------------

    def inputs(self, prompt: dict, model: Model, frozen: dict, batch: dict, embeds: Float[Array, "B T E"], step=0
               ) -> PromptedInputs:
        """What the transformer reads for `batch` (its token embeddings `embeds`) under this prompt."""
        policy = policy_of(frozen)
        if self.adapts_layers:
            return PromptedInputs(embeds, adapter=jax.tree.map(policy.cast_prompt_in, self.adapter(prompt, model,
                                                                                                    frozen)))
        if self.makes_prefix:
            k, v, layer_mask = self.batch_prefix(prompt, model, frozen, step, batch["task_id"])
            mask = jnp.broadcast_to(layer_mask[:, None, None], (k.shape[0], 1, k.shape[2]))
            return PromptedInputs(embeds, prefix=Prefix(policy.cast_prompt_in(k), policy.cast_prompt_in(v), mask))
        virtual = self.batch_virtual_tokens(prompt, model, frozen, step, batch["task_id"])
        return PromptedInputs(insert_batch(embeds, policy.cast_prompt_in(virtual), batch["slots"]))

    @property
    def per_example(self) -> bool:
        """Whether examples of one batch see different prompts (then no head is shared)."""
        return False

    @property
    def prefix_positions(self) -> int:
        """Positions the prompt takes before the input's first token (prefix keys/values)."""
        return self.length if self.makes_prefix else 0

    def batch_virtual_tokens(self, prompt: dict, model: Model, frozen: dict, step, task_id: Int[Array, "B"]
                             ) -> Float[Array, "N E"] | Float[Array, "B N E"]:
        """The virtual tokens of a batch: shared ([N, E]) or per example ([B, N, E])."""
        return self.virtual_tokens(prompt, model, frozen, step)

    def batch_prefix(self, prompt: dict, model: Model, frozen: dict, step, task_id: Int[Array, "B"]
                     ) -> tuple[Float[Array, "L B P H K"], Float[Array, "L B P H K"], Bool[Array, "L"]]:
        """The prefix keys/values of a batch, with a batch axis of 1 (shared) or B (per example)."""
        k, v, layer_mask = self.prefix(prompt, model, frozen, step)
        return k[:, None], v[:, None], layer_mask

    # ---- tasks and export ------------------------------------------------------------------------

    @property
    def n_tasks(self) -> int:
        return 1

    def task_view(self, prompt: dict, task: int) -> tuple["PromptMethod", dict]:
        """(method, prompt) of one task alone."""
        if task != 0:
            raise IndexError(f"task {task} of a single-task prompt")
        return self, prompt

    def peft_config(self) -> dict:
        """The PEFT adapter_config.json entries that name this method's adapter type."""
        return {"peft_type": "PROMPT_TUNING", "prompt_tuning_init": "RANDOM"}

    def peft_incompatibility(self, template: Template) -> str | None:
        """Why PEFT cannot hold this prompt in this template, or None if it can (prepended virtual tokens)."""
        pieces = template.pieces({f: "" for f in template.fields}, self.length)
        slots = [p for p in pieces if isinstance(p, int)]
        if len(slots) != 1 or not isinstance(pieces[0], int):
            return (f"the prompt sits inside the template {template.text!r}; PEFT prompt tuning can only prepend "
                    "virtual tokens to the whole input")
        return None


class EmbeddingInit:
    """How virtual token embeddings start (`init_from`, settings.EmbeddingInitSettings; init.py)."""

    def initializer(self, model: Model, frozen: dict) -> inits.Initializer:
        table = model.embedding_table(frozen)
        if self.init_from == "vocab_normal":
            return inits.vocab_normal(table)
        if self.init_from == "uniform":
            return inits.uniform(self.init_scale)
        if self.init_from == "sampled_vocab":
            return inits.sampled_vocab(table, self.sample_pool)
        return inits.from_token_ids(table, self.init_ids)  # "text" (settings.py checked the name)
