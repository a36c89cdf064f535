"""The prompted model's scores (prompts/forward.py) against transformers: each example's target
log-likelihood and every position's logits, with the virtual tokens inserted by hand as input
embeddings into the PyTorch model, computed in float64."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import ANTONYM_PAIRS

from jaxprompt.data.batches import collate
from jaxprompt.data.tasks import BUILTIN
from jaxprompt.data.templates import Template, common_prefix_length, encode
from jaxprompt.prompts import SoftPrompt
from jaxprompt.prompts.forward import prompted_logits, target_logprobs
from jaxprompt.session import Session

INFIX = Template("Here are two {prompt} {word1} and", " {word2}")


def _hf_log_likelihoods(hf, wte, encoded, virtual):
    """Per example: the target's log-likelihood and the logits, from inputs_embeds (float64 softmax)."""
    import torch

    out = []
    for e in encoded:
        rows = [torch.tensor(np.asarray(virtual[s]))[None] if s >= 0 else wte[t][None]
                for t, s in zip(e.tokens, e.slots)]
        with torch.no_grad():
            logits = hf(inputs_embeds=torch.cat(rows)[None].float()).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        n = e.n_target
        target = torch.tensor(e.tokens[-n:])
        out.append((float(logp[torch.arange(len(e) - n - 1, len(e) - 1), target].sum()), logits.numpy()))
    return out


def test_target_log_likelihoods_and_logits_are_what_transformers_computes(tiny_hf):
    torch = pytest.importorskip("torch")
    hf, directory = tiny_hf("gpt2-50k")
    method = SoftPrompt(length=3)
    session = Session.load(directory, BUILTIN["antonyms"], method, cache=False)
    prompt = method.init(jax.random.key(0), session.model, session.frozen, 3)
    encoded = [encode(INFIX, {"word1": a, "word2": b}, session.tokenizer, method) for a, b in ANTONYM_PAIRS[:5]]
    theirs = _hf_log_likelihoods(hf.eval(), hf.get_input_embeddings().weight, encoded, prompt["embeddings"])
    for shared in (0, common_prefix_length(encoded)):  # the shared head computed once, or every row whole
        batch = collate(encoded, session.pad_id, shared_len=shared)
        ours = np.asarray(target_logprobs(session.model, session.frozen, method, prompt, batch))
        np.testing.assert_allclose(ours, [ll for ll, _ in theirs], atol=2e-4, rtol=1e-5)
    logits = np.asarray(prompted_logits(session.model, session.frozen, method, prompt, batch))  # [B, T, V]
    for b, (e, (_, full)) in enumerate(zip(encoded, theirs)):
        np.testing.assert_allclose(logits[b, :len(e)], full, atol=1e-4, rtol=0)
    assert torch is not None
