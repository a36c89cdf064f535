"""LLaMA-Adapter's adaption prompts (Zhang et al. 2023, "LLaMA-Adapter: Efficient Fine-tuning of
Language Models with Zero-init Attention").

Each of the top L layers gets A learned vectors of the model width. The layer's queries read them
through the layer's own key/value projections, in a softmax of their own, and the result is scaled
by a per-layer gate that starts at zero: training starts from exactly the frozen model, and
adaptation enters only the top layers, where the paper finds it matters most. The prompts live in
no token position, so templates need no `{prompt}` slot for them (a slot there is simply empty).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxprompt.models import Model
from jaxprompt.models.layers.attention import Adapter
from jaxprompt.prompts.base import PromptMethod
from jaxprompt.prompts.settings import AdaptionSettings


@dataclasses.dataclass(frozen=True)
class AdaptionPrompt(AdaptionSettings, PromptMethod):
    """`length` vectors in each of the top `top_layers` layers (PEFT's adapter_len, adapter_layers)."""

    takes_positions: ClassVar[bool] = False
    adapts_layers: ClassVar[bool] = True

    def n_layers(self, model: Model) -> int:
        L = model.config.n_layers
        if self.top_layers is not None and not 1 <= self.top_layers <= L:
            raise ValueError(f"top_layers must be in 1..{L}, got {self.top_layers}")
        return L if self.top_layers is None else self.top_layers

    def init(self, key, model: Model, frozen: dict, n_virtual: int = 0) -> dict:
        """Prompts ~ N(0, 1) (the official code's nn.Embedding, as PEFT), gates at zero."""
        n = self.n_layers(model)
        return {"prompt": jax.random.normal(key, (n, self.length, model.config.d_model), jnp.float32),
                "gate": jnp.zeros((n,), jnp.float32)}

    def adapter(self, prompt: dict, model: Model, frozen: dict) -> Adapter:
        """Every layer's adapter; layers below the top ones get zero gates, which leave them exact."""
        below = model.config.n_layers - self.n_layers(model)
        vectors: Float[Array, "L A D"] = jnp.concatenate(
            [jnp.zeros((below, *prompt["prompt"].shape[1:]), prompt["prompt"].dtype), prompt["prompt"]])
        return Adapter(prompt=vectors, gate=jnp.concatenate([jnp.zeros((below,), prompt["gate"].dtype), prompt["gate"]]))

    def peft_config(self) -> dict:
        return {"peft_type": "ADAPTION_PROMPT"}

    def peft_incompatibility(self, template) -> str | None:
        return None  # adaption prompts take no position in the template; the model type is export's check
