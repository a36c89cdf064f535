"""P-tuning (Liu et al. 2021): a prompt encoder maps trainable inputs to the virtual tokens."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxprompt.models import Model
from jaxprompt.prompts.base import EmbeddingInit, PromptMethod
from jaxprompt.prompts.settings import PTuningSettings
from jaxprompt.prompts.soft import SoftPrompt


class PromptEncoder(nn.Module):
    """MLP, or bidirectional LSTM then MLP (PEFT's P_TUNING encoder layouts)."""

    kind: str  # "mlp" | "lstm"
    hidden: int
    out: int

    @nn.compact
    def __call__(self, x: Float[Array, "N E"]) -> Float[Array, "N E"]:
        if self.kind == "lstm":
            for _ in range(2):
                x = nn.Bidirectional(nn.RNN(nn.OptimizedLSTMCell(self.hidden)),
                                     nn.RNN(nn.OptimizedLSTMCell(self.hidden)))(x[None])[0]
            return nn.Dense(self.out)(nn.relu(nn.Dense(2 * self.hidden)(x)))
        if self.kind == "mlp":
            x = nn.relu(nn.Dense(self.hidden)(x))
            x = nn.relu(nn.Dense(self.hidden)(x))
            return nn.Dense(self.out)(x)
        raise ValueError(f"unknown p-tuning encoder {self.kind!r}; use mlp or lstm")


@dataclasses.dataclass(frozen=True)
class PTuning(PTuningSettings, EmbeddingInit, PromptMethod):
    """Virtual tokens computed by a prompt encoder (an MLP, or an LSTM then an MLP) from learned inputs."""

    def _module(self, model: Model) -> PromptEncoder:
        return PromptEncoder(self.encoder, self.hidden, model.config.d_embed)

    def init(self, key, model: Model, frozen: dict, n_virtual: int) -> dict:
        k_in, k_enc = jax.random.split(key)
        inputs = self.initializer(model, frozen)(k_in, (n_virtual, model.config.d_embed))
        return {"inputs": inputs, "encoder": self._module(model).init(k_enc, inputs)["params"]}

    def virtual_tokens(self, prompt, model, frozen, step) -> Float[Array, "N E"]:
        return self._module(model).apply({"params": prompt["encoder"]}, prompt["inputs"]).astype(jnp.float32)

    def peft_config(self) -> dict:
        return {"peft_type": "P_TUNING", "encoder_reparameterization_type": "MLP", "encoder_hidden_size": self.hidden}

    def inference_prompt(self, prompt, model, frozen):
        """Bakes the encoder: its output becomes a plain soft prompt (what PEFT saves for P_TUNING)."""
        baked = SoftPrompt(length=self.length)
        return baked, {"embeddings": self.virtual_tokens(prompt, model, frozen, 0)}
