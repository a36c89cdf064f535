"""A frozen model + tokenizer + task + prompt method: what training, evaluation and export share."""

from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp

from jaxprompt.models.config import ModelConfig
from jaxprompt.data import Encoded, check_lengths, common_prefix_length, encode
from jaxprompt.models import Model
from jaxprompt.models.convert import load_pretrained, resolve
from jaxprompt.precision import as_dtype
from jaxprompt.prompt_cache import PromptCache
from jaxprompt.prompts import MultiTask, PromptMethod
from jaxprompt.tasks import Task
from jaxprompt.tokenizer import Tokenizer, check_tokenizer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(REPO_ROOT, "checkpoints", "tiny-gpt2-wordnet")


@dataclasses.dataclass
class Session:
    model: Model
    frozen: dict
    tokenizer: Tokenizer
    task: Task
    method: PromptMethod
    model_id: str = ""
    prompt_cache: PromptCache = dataclasses.field(default_factory=PromptCache)

    @classmethod
    def load(cls, model_id: str, task: Task, method: PromptMethod, dtype="float32", remat: bool = False,
             tokenizer: Tokenizer | None = None) -> "Session":
        """Loads the frozen model (local dir, HF cache or hub) and its tokenizer, and checks they match."""
        directory = resolve(model_id)
        config, frozen = load_pretrained(directory, dtype=as_dtype(dtype))
        tokenizer = tokenizer or Tokenizer.load(directory)
        check_tokenizer(tokenizer, config)
        return cls(Model(config, remat=remat), frozen, tokenizer, task, method, model_id)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def prompt_length(self) -> int:
        return self.method.length if not isinstance(self.method, MultiTask) else self.method.base.length

    @property
    def n_virtual(self) -> int:
        return self.task.template.n_virtual(self.prompt_length)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0

    def shared_len(self, examples: list[Encoded]) -> int:
        """Leading positions every example shares (0 where per-example prompts rule sharing out)."""
        if isinstance(self.method, MultiTask):
            return 0
        return common_prefix_length(examples)

    def encode(self, rows: list[dict], hard_prompt: str | None = None, with_target: bool = True) -> list[Encoded]:
        """Rows -> ids. With `hard_prompt`, the written prompt replaces {prompt} (baseline)."""
        virtual = self.method.kind != "prefix"
        out = [encode(self.task.template, r, self.tokenizer, self.prompt_length, hard_prompt=hard_prompt,
                      with_target=with_target, task_id=int(r.get("task_id", 0)), virtual=virtual) for r in rows]
        extra = self.method.length if (hard_prompt is None and self.method.kind == "prefix") else 0
        check_lengths(out, self.config.max_positions, extra)
        return out

    def hard_prompt_ids(self, text: str | None = None) -> tuple[int, ...]:
        """Token ids of a prompt text (the task's written prompt by default), for text initialisation."""
        return tuple(self.tokenizer.encode(" " + (text or self.task.hard_prompt).strip()))

    @property
    def compute_dtype(self):
        import jax

        return jnp.dtype(jax.tree.leaves(self.frozen)[0].dtype)
