"""Bad checkpoints and tokenizers give errors that name the problem."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from jaxprompt.models.config import ConfigError, ModelConfig
from jaxprompt.models.convert import CheckpointError, load_pretrained
from jaxprompt.tokenizer import Tokenizer, TokenizerError, check_tokenizer

pytest.importorskip("torch")


def _copy(directory, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(directory, target)
    return target


def _rewrite(target, edit):
    from safetensors.numpy import load_file, save_file

    state = load_file(str(target / "model.safetensors"))
    edit(state)
    save_file(state, str(target / "model.safetensors"))


def test_unknown_model_type(tiny_hf, tmp_path):
    target = _copy(tiny_hf("gpt2")[1], tmp_path)
    config = json.loads((target / "config.json").read_text())
    config["model_type"] = "llama"
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="unknown model_type 'llama'"):
        load_pretrained(str(target))
    with pytest.raises(ConfigError, match="unknown model_type"):
        ModelConfig(model_type="bert", vocab_size=1, max_positions=1, d_model=2, n_layers=1, n_heads=1, d_ff=1, d_embed=2)


def test_missing_tensor_is_named(tiny_hf, tmp_path):
    target = _copy(tiny_hf("gpt2")[1], tmp_path)
    _rewrite(target, lambda s: s.pop("transformer.h.1.mlp.c_fc.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors \['transformer.h.1.mlp.c_fc.weight'\]"):
        load_pretrained(str(target))


def test_extra_tensor_is_named(tiny_hf, tmp_path):
    target = _copy(tiny_hf("opt")[1], tmp_path)
    _rewrite(target, lambda s: s.__setitem__("model.decoder.layers.2.fc1.weight", np.zeros((64, 32), np.float32)))
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['model.decoder.layers.2.fc1.weight'\]"):
        load_pretrained(str(target))


def test_misshaped_tensor_is_named(tiny_hf, tmp_path):
    target = _copy(tiny_hf("opt")[1], tmp_path)
    _rewrite(target, lambda s: s.__setitem__("model.decoder.layers.0.fc2.weight", np.zeros((32, 63), np.float32)))
    with pytest.raises(CheckpointError, match=r"model.decoder.layers.0.fc2.weight has shape \(32, 63\).*expects \(32, 64\)"):
        load_pretrained(str(target))


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    with pytest.raises(CheckpointError, match="not a model checkpoint: none of model.safetensors"):
        load_pretrained(str(tmp_path))
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_pretrained(str(tmp_path / "nope"))


def test_corrupt_safetensors(tiny_hf, tmp_path):
    target = _copy(tiny_hf("gpt2")[1], tmp_path)
    (target / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        load_pretrained(str(target))


def test_offline_unknown_id_says_how_to_get_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="huggingface-cli download"):
        load_pretrained("gpt2-this-does-not-exist")


def test_tokenizer_vocabulary_mismatch(tiny_hf, gpt2_tokenizer):
    config, _ = load_pretrained(tiny_hf("gpt2")[1])  # vocabulary of 128
    with pytest.raises(TokenizerError, match="has 50257 tokens but the model's vocabulary has 128"):
        check_tokenizer(gpt2_tokenizer, config)
    big = ModelConfig.from_hf_config({"model_type": "opt"})  # OPT: 50272 rows, EOS id 2
    with pytest.raises(TokenizerError, match="ends text with id 50256, the model with 2"):
        check_tokenizer(gpt2_tokenizer, big)
    check_tokenizer(gpt2_tokenizer, ModelConfig.from_hf_config({"model_type": "gpt2"}))


def test_gpt2_tokenizer_ids(gpt2_tokenizer):
    assert gpt2_tokenizer.encode("Here are two antonyms hot and cold") == [4342, 389, 734, 281, 1122, 88, 907, 3024, 290, 4692]
    assert gpt2_tokenizer.eos_token_id == 50256
    assert isinstance(gpt2_tokenizer, Tokenizer)
