"""A frozen model + tokenizer + task(s) + prompt method: what training, evaluation and export share."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import numpy as np

from jaxprompt.data.tasks import Task
from jaxprompt.data.templates import Encoded, check_positions, common_prefix_length, encode
from jaxprompt.data.tokenizer import Tokenizer, TokenizerError, check_tokenizer
from jaxprompt.models import Model
from jaxprompt.models.file_hashes import TABLE_NAME, directory_digest
from jaxprompt.models.loading import load_pretrained, resolve
from jaxprompt.models.model_config import ConfigError, ModelConfig
from jaxprompt.models.quantize import quantized_scheme
from jaxprompt.paths import prompt_cache_dir
from jaxprompt.precision import as_dtype, converts_layer_by_layer, policy_of
from jaxprompt.prompts import PromptMethod
from jaxprompt.prompts.cache import PromptCache
from jaxprompt.settings import one_line


def _check_config_json(directory: str) -> None:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return  # load_pretrained names what is missing
    try:
        with open(path) as f:
            json.load(f)
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None


def load_tokenizer(directory: str) -> Tokenizer:
    """The tokenizer beside a checkpoint; an unreadable file is one line naming the directory."""
    _check_config_json(directory)  # the tokenizer reads the model type from it
    try:
        return Tokenizer.load(directory)
    except TokenizerError:
        raise
    except Exception as e:  # tokenizers / json raise their own types for unreadable files
        raise TokenizerError(f"the tokenizer in {directory} cannot be read ({one_line(e)})") from None


def _spread_over_processes(tree) -> bool:
    """Whether some array of `tree` lies partly on other processes' devices."""
    return not all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(tree))


@dataclasses.dataclass
class Session:
    model: Model
    frozen: dict
    tokenizer: Tokenizer
    task: Task
    method: PromptMethod
    model_id: str = ""
    prompt_cache: PromptCache = dataclasses.field(default_factory=PromptCache)
    tasks: tuple[Task, ...] = ()  # multi-task: all tasks, an example's task_id indexes them (task is tasks[0])
    weights_id: str | None = None  # fingerprint of every byte of `frozen`, computed once (see fingerprint)
    # the checkpoint directory `frozen` was loaded from, and that very pytree: while `frozen` is it,
    # the fingerprint is of the directory's files (file_hashes.py), not of the arrays
    weights_dir: str | None = None
    loaded_frozen: dict | None = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def load(cls, model_id: str, task: Task, method: PromptMethod, dtype="float32", remat: bool = False,
             tokenizer: Tokenizer | None = None, cache: bool | str = True, tasks: tuple[Task, ...] = (),
             shardings=None, quantize=None) -> "Session":
        """Loads the frozen model (local dir, HF cache or hub) and its tokenizer, and checks they match.

        `cache`: the on-disk prompt cache (True: `prompt_cache_dir()`, a path, or False: memory only).
        `shardings`: load every weight straight into shards (`load_pretrained`'s, e.g. a
        `MeshParallel`'s `frozen_shardings`). `quantize`: "int8" or "int4" holds the layers' matmul
        weights in 8 or 4 bits (models/quantize.py; None or "none": in `dtype`)."""
        directory = resolve(model_id)
        _check_config_json(directory)
        config, frozen = load_pretrained(directory, dtype=as_dtype(dtype), shardings=shardings, quantize=quantize)
        tokenizer = tokenizer or load_tokenizer(directory)
        check_tokenizer(tokenizer, config)
        directory_cache = prompt_cache_dir() if cache is True else (cache or None)
        if _spread_over_processes(frozen):
            # weights spread over several processes give heads spread over them: no process holds
            # one whole to write, so heads are kept in memory only
            directory_cache = None
        model = Model(config, remat=remat or converts_layer_by_layer(dtype))
        frozen = model.hold_as_bits(frozen)  # bf16 on a CPU: layers and tables as programs take them
        return cls(model, frozen, tokenizer, task, method, model_id,
                   PromptCache(directory_cache), tuple(tasks), weights_dir=directory, loaded_frozen=frozen)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def all_tasks(self) -> tuple[Task, ...]:
        return self.tasks or (self.task,)

    @property
    def prompt_length(self) -> int:
        return self.method.length

    @property
    def n_virtual(self) -> int:
        return self.task.template.n_virtual(self.prompt_length)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def shared_len(self, examples: list[Encoded]) -> int:
        """Leading positions every example shares (0 where per-example prompts rule sharing out)."""
        return 0 if self.method.per_example else common_prefix_length(examples)

    def shared_head(self, encoded: list[Encoded], method, prompt, share: bool = True):
        """(S, keys/values of the head of S positions every row of `encoded` shares), from the
        prompt cache; (0, None) where nothing is shared. `method` and `prompt` in their inference
        form (None, None for the written prompt)."""
        S = common_prefix_length(encoded) if share and not (method is not None and method.per_example) else 0
        if S == 0:
            return 0, None
        return S, self.prompt_cache.head(self, method, prompt, encoded[0].tokens[:S], encoded[0].slots[:S])

    def encode(self, rows: list[dict], hard_prompt: str | None = None, with_target: bool = True,
               new_tokens: int = 0) -> list[Encoded]:
        """Rows -> ids (a row's `task_id` picks its task's template). With `hard_prompt`, the written
        prompt replaces {prompt} (baseline). Refuses what would not fit the model's positions,
        `new_tokens` to generate included."""
        out = [encode(self.all_tasks[int(r.get("task_id", 0))].template, r, self.tokenizer, self.method,
                      hard_prompt=hard_prompt, with_target=with_target, task_id=int(r.get("task_id", 0)))
               for r in rows]
        prefix = self.method.prefix_positions if hard_prompt is None else 0
        check_positions(out, self.config.max_positions, prefix, new_tokens)
        return out

    def task_session(self, task: int, prompt) -> tuple["Session", dict]:
        """This session narrowed to one task of a multi-task prompt, and that task's prompt."""
        method, task_prompt = self.method.task_view(prompt, task)
        return dataclasses.replace(self, task=self.all_tasks[task], tasks=(), method=method), task_prompt

    def hard_prompt_ids(self, text: str | None = None) -> tuple[int, ...]:
        """Token ids of a prompt text (the task's written prompt by default), for text initialisation."""
        return tuple(self.tokenizer.encode(" " + (text or self.task.hard_prompt).strip()))

    def fingerprint(self) -> str:
        """A hash of every byte of the frozen weights (with paths, shapes, dtypes), computed once.

        Keys the prompt cache: any changed weight, anywhere, changes it. Weights loaded from a
        checkpoint directory are named by its files' content hashes (file_hashes.py: read once,
        remembered by path, size and mtime, so a later load reads no weight byte) with the dtype
        and quantization they were loaded in. Other weights are hashed array by array (quantized
        ones as their integers and scales); spread over several processes, each shard by the
        process holding its first replica, and the processes' hashes combined (every process must
        then call this at the same point)."""
        if self.weights_id is None:
            h = hashlib.sha256()
            if self.weights_dir is not None and self.frozen is self.loaded_frozen:
                table = (os.path.join(self.prompt_cache.directory, TABLE_NAME) if self.prompt_cache.directory
                         else None)
                held = self.compute_dtype if (scheme := quantized_scheme(self.frozen)) is None \
                    else f"{self.compute_dtype} quantized {scheme}"
                h.update(f"files {directory_digest(self.weights_dir, table)} as {held}".encode())
                h.update(self.tokenizer.backend.to_str().encode())
            else:
                h = self._hash_arrays()
            self.weights_id = h.hexdigest()[:32]
        return self.weights_id

    def _hash_arrays(self):
        spread = _spread_over_processes(self.frozen)
        h = hashlib.sha256()
        for path, leaf in jax.tree_util.tree_flatten_with_path(self.frozen)[0]:
            h.update(f"{jax.tree_util.keystr(path)}{leaf.shape}{leaf.dtype}".encode())
            if spread:
                for shard in sorted((s for s in leaf.addressable_shards if s.replica_id == 0),
                                    key=lambda s: [(i.start or 0) for i in s.index]):
                    h.update(repr(shard.index).encode())
                    h.update(np.ascontiguousarray(shard.data).reshape(-1).view(np.uint8))
            else:
                h.update(np.ascontiguousarray(jax.device_get(leaf)).reshape(-1).view(np.uint8))
        h.update(self.tokenizer.backend.to_str().encode())
        if spread:
            from jax.experimental import multihost_utils

            digests = multihost_utils.process_allgather(np.frombuffer(h.digest(), np.uint8))
            h = hashlib.sha256(np.asarray(digests).tobytes())
        return h

    @property
    def compute_dtype(self):
        return policy_of(self.frozen).compute_dtype
