"""Checkpoints: sharded safetensors, pytorch_model.bin, slices, bf16, and errors that
name the problem (missing, unexpected or misshaped tensors, not a checkpoint, corrupt files)."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprompt.models import ConfigError, Model, load_pretrained
from jaxprompt.models.convert import CheckpointError
from jaxprompt.models.loading import CheckpointReader, TensorSource

torch = pytest.importorskip("torch")


def _copy(directory, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(directory, target)
    return target


def _rewrite(target, edit):
    from safetensors.numpy import load_file, save_file

    state = load_file(str(target / "model.safetensors"))
    edit(state)
    save_file(state, str(target / "model.safetensors"))


def test_sharded_safetensors_and_pytorch_bin(tiny_hf, tmp_path):
    pt_model, directory = tiny_hf("llama")
    _, ref = load_pretrained(directory)
    pt_model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    _, sharded = load_pretrained(str(tmp_path / "sharded"))
    jax.tree.map(np.testing.assert_array_equal, ref, sharded)

    (tmp_path / "bin").mkdir()
    torch.save(pt_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "sharded" / "config.json").read_text())
    _, from_bin = load_pretrained(str(tmp_path / "bin"))
    jax.tree.map(np.testing.assert_array_equal, ref, from_bin)


def test_slices_are_read_without_the_whole_tensor(tiny_hf):
    """Any slice of a stacked, transposed leaf equals the same slice of the whole leaf."""
    _, directory = tiny_hf("llama")
    config, params = load_pretrained(directory)
    reader = CheckpointReader(config, TensorSource(directory))
    path = ("layers", "self_attn", "q_proj", "kernel")  # [L, D, H*K], stored per layer as (H*K, D)
    part = reader.leaf(path, (slice(1, 2), slice(8, 24), slice(0, 12)))
    np.testing.assert_array_equal(part, np.asarray(params["layers"]["self_attn"]["q_proj"]["kernel"])[1:2, 8:24, :12])


@pytest.mark.parametrize("variant", ["gemma", "llama", "gpt_neox", "opt"])
def test_bf16_load_casts_every_leaf(tiny_hf, variant):
    _, directory = tiny_hf(variant)
    config, p32 = load_pretrained(directory)
    _, p16 = load_pretrained(directory, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(p16)} == {jnp.dtype(jnp.bfloat16)}
    tokens = jnp.arange(3, 23).reshape(2, 10)
    model = Model(config)
    l32, l16 = model.logits(p32, tokens), model.logits(p16, tokens)
    assert l16.dtype == jnp.float32  # logits stay fp32 under bf16 compute
    assert np.abs(np.asarray(l32 - l16)).max() < 0.1 * np.abs(np.asarray(l32)).max()


def test_unknown_model_type(tiny_hf, tmp_path):
    target = _copy(tiny_hf("gpt2")[1], tmp_path)
    config = json.loads((target / "config.json").read_text())
    config["model_type"] = "mamba"
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="unknown model_type 'mamba'"):
        load_pretrained(str(target))


def test_invalid_config_json_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json is not valid JSON"):
        load_pretrained(str(tmp_path))


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
    target = _copy(tiny_hf("llama")[1], tmp_path)
    _rewrite(target, lambda s: s.__setitem__("model.layers.0.mlp.down_proj.weight", np.zeros((48, 63), np.float32)))
    with pytest.raises(CheckpointError, match=r"model.layers.0.mlp.down_proj.weight has shape \(48, 63\).*"
                                              r"expects \(48, 64\)"):
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


def test_whole_tensors_are_read_without_a_memory_map_and_match_safetensors(tmp_path):
    """The plain-I/O reader gives exactly what safetensors' own reader gives, for every dtype a
    checkpoint uses (bf16 through ml_dtypes)."""
    import ml_dtypes
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from jaxprompt.models.loading import _read_whole, _safetensors_header

    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((3, 5)).astype(ml_dtypes.bfloat16), "b": rng.standard_normal(7).astype(np.float32),
               "c": rng.integers(0, 9, (2, 2)).astype(np.int64), "d": rng.standard_normal((4, 1)).astype(np.float16)}
    path = str(tmp_path / "w.safetensors")
    save_file(tensors, path)
    header = _safetensors_header(path)
    with safe_open(path, framework="numpy") as handle:
        for key in tensors:
            ours, theirs = _read_whole(path, header, key), handle.get_tensor(key)
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
            np.testing.assert_array_equal(ours.view(np.uint8), np.ascontiguousarray(theirs).view(np.uint8))


@pytest.mark.parametrize("target", ["bfloat16", "float32"])
def test_transposed_weights_are_copied_in_tiles_exactly(target):
    """Kernels are stored [out, in] in HF files and [in, out] here: the tiled copy (edges that are
    not multiples of the tile included) equals numpy's plain transpose, bit for bit."""
    import ml_dtypes

    from jaxprompt.models.loading import _copy_into

    x = np.random.default_rng(0).standard_normal((300, 700), np.float32).astype(ml_dtypes.bfloat16)
    out = np.empty((700, 300), ml_dtypes.bfloat16 if target == "bfloat16" else np.float32)
    _copy_into(out, x.T, block=128)
    np.testing.assert_array_equal(out.view(np.uint8), np.ascontiguousarray(x.T).astype(out.dtype).view(np.uint8))
