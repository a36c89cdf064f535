"""Tokenizers: GPT-2's ids, BOS framed the way transformers frames it for each family, and
mismatches with the model named."""

from __future__ import annotations

import json

import pytest
from conftest import TOKENIZER_DIR
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import processors

from jaxprompt.data.tokenizer import Tokenizer, TokenizerError, check_tokenizer
from jaxprompt.models import config_from_hf, load_pretrained

TEXT = "Here are two antonyms hot and"


def test_gpt2_tokenizer_ids(gpt2_tokenizer):
    assert gpt2_tokenizer.encode("Here are two antonyms hot and cold") == [4342, 389, 734, 281, 1122, 88, 907, 3024,
                                                                           290, 4692]
    assert gpt2_tokenizer.eos_token_id == 50256 and not gpt2_tokenizer.add_bos


def _model_dir(tmp_path, model_type: str, bos_template: bool, tokenizer_config: dict | None = None):
    """A directory with a config.json of `model_type` and GPT-2's tokenizer.json, whose
    post-processor prepends BOS (<|endoftext|>) as Llama 3's and Gemma's tokenizer.json do."""
    directory = tmp_path / model_type
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": model_type, "bos_token_id": 50256,
                                                       "eos_token_id": 50256}))
    backend = HFTokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
    if bos_template:
        backend.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", pair="<|endoftext|> $A <|endoftext|> $B",
            special_tokens=[("<|endoftext|>", 50256)])
    backend.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
              "bos_token": "<|endoftext|>", **(tokenizer_config or {})}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return str(directory)


@pytest.mark.parametrize("model_type,bos_template", [("llama", True), ("gemma", True), ("qwen2", False),
                                                     ("gpt_neox", False), ("mistral", True)])
def test_bos_as_transformers_adds_it(tmp_path, model_type, bos_template):
    pytest.importorskip("torch")
    from transformers import AutoTokenizer

    directory = _model_dir(tmp_path, model_type, bos_template)
    ours = Tokenizer.load(directory)
    framed = ([ours.bos_token_id] if ours.add_bos else []) + ours.encode(TEXT)
    assert framed == AutoTokenizer.from_pretrained(directory)(TEXT).input_ids
    assert ours.add_bos == bos_template


def test_explicit_add_bos_token_and_family_default(tmp_path):
    explicit = _model_dir(tmp_path, "llama", bos_template=True, tokenizer_config={"add_bos_token": False})
    assert not Tokenizer.load(explicit).add_bos
    # a vocab.json + merges.txt checkpoint (OPT on the hub) follows its family: OPT starts texts with </s>
    opt = tmp_path / "opt"
    opt.mkdir()
    (opt / "config.json").write_text(json.dumps({"model_type": "opt"}))
    backend = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())
    (opt / "vocab.json").write_text(json.dumps({**backend["model"]["vocab"], "</s>": 50257}))
    merges = backend["model"]["merges"]
    (opt / "merges.txt").write_text("#version: 0.2\n" + "\n".join(m if isinstance(m, str) else " ".join(m)
                                                                     for m in merges) + "\n")
    tok = Tokenizer.load(str(opt))
    assert tok.add_bos and tok.bos_token_id == 50257 and tok.eos_token_id == 50257


def test_pad_falls_back_to_eos(tmp_path):
    directory = _model_dir(tmp_path, "llama", bos_template=True)
    assert Tokenizer.load(directory).pad_token_id == 50256  # no pad token anywhere: EOS pads (masked anyway)


def test_tokenizer_model_mismatch(tiny_hf, gpt2_tokenizer):
    pytest.importorskip("torch")
    config, _ = load_pretrained(tiny_hf("gpt2")[1])  # vocabulary of 128
    with pytest.raises(TokenizerError, match="has 50257 tokens but the model's vocabulary has 128"):
        check_tokenizer(gpt2_tokenizer, config)
    big = config_from_hf({"model_type": "opt"})  # OPT: 50272 rows, EOS id 2
    with pytest.raises(TokenizerError, match="ends text with id 50256, the model with 2"):
        check_tokenizer(gpt2_tokenizer, big)
    check_tokenizer(gpt2_tokenizer, config_from_hf({"model_type": "gpt2"}))
    # instruct models list several EOS ids; the tokenizer's may be any of them
    check_tokenizer(gpt2_tokenizer, config_from_hf({"model_type": "llama", "vocab_size": 50304,
                                                    "eos_token_id": [7, 50256]}))


def test_unreadable_tokenizer_is_named(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(TokenizerError, match="cannot read .*tokenizer.json"):
        Tokenizer.load(str(tmp_path))
