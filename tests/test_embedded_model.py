"""The embedded default model: loads in `transformers` with the same logits, and a learned prompt
draws out antonym knowledge that pretraining put there."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from jaxprompt.session import DEFAULT_MODEL

pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(DEFAULT_MODEL, "model.safetensors")),
                                reason="embedded model not built (scripts/pretrain_tiny.py)")


def test_embedded_checkpoint_is_a_standard_hf_gpt2():
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from jaxprompt.models import Model
    from jaxprompt.models.convert import load_pretrained
    from jaxprompt.tokenizer import Tokenizer

    assert os.path.getsize(os.path.join(DEFAULT_MODEL, "model.safetensors")) < 40e6
    tokenizer = Tokenizer.load(DEFAULT_MODEL)
    ids = tokenizer.encode("The opposite of hot is cold. Here are two antonyms big and")
    assert ids[:3] == [464, 6697, 286]
    pt = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL, dtype=torch.float32).eval()
    config, params = load_pretrained(DEFAULT_MODEL)
    ours = np.asarray(Model(config).logits(params, np.array([ids])))
    with torch.no_grad():
        ref = pt(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    report = json.load(open(os.path.join(DEFAULT_MODEL, "pretraining.json")))
    assert report["final_lm_loss"] < 4.5


def test_learned_prompt_beats_written_prompt_and_needs_pretraining(tmp_path):
    from jaxprompt.models import Model
    from jaxprompt.models.convert import load_pretrained, save_pretrained
    from jaxprompt.config import RunOptions, TrainConfig
    from jaxprompt.run import train_prompt
    from jaxprompt.tokenizer import Tokenizer

    config = TrainConfig.from_flags(steps=60, prompt_length=8, lr=0.1, batch_size=32, eval_examples=200,
                                    eval_every=30)
    written, learned = train_prompt(config, RunOptions(out=str(tmp_path / "pretrained")), log=lambda *a: None).results
    # measured with this config: written 1.46 nats / 50.5% exact match, learned 1.00 / 62.0%
    assert learned.loss < written.loss - 0.25, (written.summary(), learned.summary())
    assert learned.exact_match > written.exact_match + 0.03, (written.summary(), learned.summary())

    # a randomly initialised model of the same shape, prompt-tuned the same way
    model_config, _ = load_pretrained(DEFAULT_MODEL)
    random_dir = str(tmp_path / "random-model")
    save_pretrained(model_config, Model(model_config).init(jax.random.key(0)), random_dir)
    Tokenizer.load(DEFAULT_MODEL).save(random_dir)
    (random,) = train_prompt(config.replace(model=random_dir, baseline=False), RunOptions(out=str(tmp_path / "random")),
                             log=lambda *a: None).results
    assert random.loss > learned.loss + 3.0, (random.summary(), learned.summary())
    assert random.exact_match < min(0.05, learned.exact_match / 4), (random.summary(), learned.summary())
