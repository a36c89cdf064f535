"""PEFT export/import: a prompt made in JAX gives the same logits and generations in PyTorch, for every
PEFT prompt type and the families PEFT supports them on."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ANTONYM_PAIRS, write_task

from jaxprompt.data.batches import collate
from jaxprompt.data.tasks import Task
from jaxprompt.data.templates import Template
from jaxprompt.inference.decode import generate
from jaxprompt.models import positions_from_mask
from jaxprompt.prompts import METHODS
from jaxprompt.prompts.forward import prompt_inputs
from jaxprompt.runs.export import ExportError, export_peft, export_plain, peft_incompatibility
from jaxprompt.runs.peft_import import import_peft
from jaxprompt.session import Session

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

PREPEND = Task(name="opposites", template=Template("{prompt} {word1} is the opposite of", " {word2}"),
               hard_prompt="antonyms:", data="unused")
ROWS = [{"word1": a, "word2": b} for a, b in ANTONYM_PAIRS]


def _of(session, prompt):
    """What an export reads of a session: the method, its prompt, the model, its weights, the template."""
    return session.method, prompt, session.model, session.frozen, session.task.template


def _prompted(tiny_hf, variant, method):
    """A session on a tiny random model and a prompt away from its initialisation (every leaf moved,
    adaption gates off zero, so each part of the prompt shows in the outputs)."""
    pt_model, directory = tiny_hf(variant)
    session = Session.load(directory, PREPEND, method, cache=False)
    prompt = method.init(jax.random.key(0), session.model, session.frozen, session.n_virtual)
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(prompt))))
    prompt = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape, x.dtype), prompt)
    return session, prompt, pt_model, directory


def _jax_logits(session, prompt, rows):
    """Logits at every real text position, per row (virtual positions dropped)."""
    encoded = session.encode(rows, with_target=False)
    batch = collate(encoded, session.pad_id, "right")
    inputs = prompt_inputs(session.model, session.frozen, session.method, prompt, batch)
    start = 0 if inputs.prefix is None else inputs.prefix.length
    logits, _ = session.model.forward(session.frozen, inputs.embeds, positions_from_mask(batch["mask"], start),
                                      batch["mask"], prefix=inputs.prefix, adapter=inputs.adapter)
    out = []
    for b, e in enumerate(encoded):
        real = [t for t, s in enumerate(e.slots) if s < 0]
        out.append(np.asarray(logits[b, real]))
    return out, encoded


def _peft_logits(peft_model, encoded):
    out = []
    for e in encoded:
        ids = torch.tensor([[t for t, s in zip(e.tokens, e.slots) if s < 0]])
        with torch.no_grad():
            logits = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].numpy()
        out.append(logits[-ids.shape[1]:])  # prompt tuning returns the virtual positions too
    return out


def _peft_greedy(peft_model, ids, new_tokens: int) -> np.ndarray:
    """Greedy tokens from PEFT's forward pass over the whole text at every step. Not `generate`: peft
    0.21 tells decoding steps from the first by looking for `past_key_values` among generate's
    arguments, which transformers 5.24 renamed to `cache`, so its cached generation takes every step
    for the first and departs from its own forward pass (and without a cache its prefix tuning does too)."""
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, -new_tokens:].numpy()


def _task_file(tmp_path) -> str:
    """PREPEND as a task file (an imported PEFT prompt must be prepended in its task's template)."""
    return write_task(tmp_path, [{"word1": a, "word2": b} for a, b in ANTONYM_PAIRS], name="opposites",
                      template=PREPEND.template.text, target=PREPEND.template.target)


CASES = [
    ("gpt2-50k", "soft", {}),
    ("gpt2-50k", "ptuning", {"hidden": 16}),
    ("gpt2-50k", "prefix", {}),
    ("gpt2-50k", "prefix", {"reparam_hidden": 16}),
    ("gpt2-50k", "adaption", {"top_layers": 1}),
    ("opt-50k-proj", "soft", {}),
    ("opt-50k-proj", "prefix", {}),
    # grouped-query attention: PEFT sizes the prefix by key/value heads
    ("llama-50k", "soft", {}),
    ("llama-50k", "ptuning", {"hidden": 16}),
    ("llama-50k", "prefix", {}),
    ("llama-50k", "adaption", {"top_layers": 1}),
    ("gemma2-50k", "soft", {}),  # scaled embeddings: prompts live after the scale, as PEFT's do
    ("gemma2-50k", "prefix", {}),
    ("gpt_neox-50k", "prefix", {}),  # no num_key_value_heads in its config
]
PEFT_TYPES = {"soft": "PROMPT_TUNING", "ptuning": "P_TUNING", "prefix": "PREFIX_TUNING", "adaption": "ADAPTION_PROMPT"}


@pytest.mark.parametrize("variant,name,options", CASES, ids=[f"{v}-{n}-{len(o)}" for v, n, o in CASES])
def test_peft_adapter_matches_jax(tiny_hf, tmp_path, variant, name, options):
    method = METHODS[name](length=4, **options)
    session, prompt, pt_model, directory = _prompted(tiny_hf, variant, method)
    out = str(tmp_path / "adapter")
    export_peft(out, *_of(session, prompt), base_model=directory)
    config = json.load(open(f"{out}/adapter_config.json"))
    assert config["peft_type"] == PEFT_TYPES[name]

    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    peft_model = peft.PeftModel.from_pretrained(base, out).eval()
    rows = ROWS[:4]
    ours, encoded = _jax_logits(session, prompt, rows)
    theirs = _peft_logits(peft_model, encoded)
    for a, b in zip(ours, theirs):
        assert np.abs(b).max() > 1.0
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)

    # greedy generations identical (ours as one left-padded batch, PEFT's row by row)
    enc = session.encode([{"word1": w, "word2": ""} for w in ("hot", "rich", "early")], with_target=False)
    batch = collate(enc, session.pad_id, "left")
    inputs = prompt_inputs(session.model, session.frozen, session.method, prompt, batch)
    ours_gen, _ = generate(session.model, session.frozen, inputs.embeds, batch["mask"], max_new_tokens=6,
                           prefix=inputs.prefix, adapter=inputs.adapter)
    for e, row in zip(enc, np.asarray(ours_gen)):
        ids = torch.tensor([[t for t, s in zip(e.tokens, e.slots) if s < 0]])
        np.testing.assert_array_equal(row, _peft_greedy(peft_model, ids, 6))

    # and back: the imported prompt is the identical pytree (p-tuning/reparam: the baked one)
    from jaxprompt.prompts import method_from_spec
    from jaxprompt.runs.layout import read_run_info
    from jaxprompt.runs.load import load_prompt

    run = import_peft(out, str(tmp_path / "imported"), task=_task_file(tmp_path), model=directory)
    imported_method = method_from_spec(read_run_info(run)["method"])
    imported_session = Session(session.model, session.frozen, session.tokenizer, PREPEND, imported_method)
    imported = load_prompt(run, imported_session, which="last")
    _, baked = method.inference_prompt(prompt, session.model, session.frozen)
    if name == "ptuning":
        baked = {"embeddings": method.virtual_tokens(prompt, session.model, session.frozen, 0)}
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), baked, imported)


def test_adaption_export_is_refused_where_peft_adds_the_output_bias_twice(tiny_hf, tmp_path):
    """PEFT's AdaptedAttention projects the adapter's share with `o_proj`, bias included, so on a
    Llama whose output projection has a bias its zero gate is not the frozen model; jaxprompt's is
    (the bias enters once), so such a prompt cannot be a PEFT adapter: export and import say so."""
    import copy

    pt_model, directory = tiny_hf("llama-50k-bias")
    peft_model = peft.get_peft_model(copy.deepcopy(pt_model), peft.AdaptionPromptConfig(
        adapter_len=4, adapter_layers=2, task_type="CAUSAL_LM")).eval()
    assert all(float(p) == 0.0 for n, p in peft_model.named_parameters() if n.endswith("adaption_gate"))
    ids = torch.tensor([[464, 3797, 318, 257, 1332, 286, 262]])
    with torch.no_grad():
        departure = (peft_model(input_ids=ids).logits - pt_model(input_ids=ids).logits).abs().max().item()
    assert departure > 0.1  # PEFT at zero gates departs from the frozen model

    method = METHODS["adaption"](length=4, top_layers=2)
    session, prompt, _, _ = _prompted(tiny_hf, "llama-50k-bias", method)  # its zero gate: tests/test_families.py
    assert "bias a second time" in peft_incompatibility(session.method, session.model, session.task.template)
    with pytest.raises(ExportError, match="bias a second time.*--to plain") as info:
        export_peft(str(tmp_path / "adapter"), *_of(session, prompt), base_model="x")
    assert "\n" not in str(info.value)

    peft_model.save_pretrained(str(tmp_path / "theirs"))
    with pytest.raises(ExportError, match="bias a second time"):
        import_peft(str(tmp_path / "theirs"), str(tmp_path / "run"), task=_task_file(tmp_path), model=directory)


def test_unrepresentable_prompts_say_so(tiny_hf, tmp_path):
    _, directory = tiny_hf("gpt2-50k")
    infix = Task(name="a", template=Template("Here are two {prompt} {word1} and", " {word2}"), data="unused")
    two = Task(name="b", template=Template("{prompt} Q: {word1} {prompt:2}", " {word2}"), data="unused")
    for task, method, message in [
        (infix, METHODS["soft"](length=3), "prompt sits inside the template"),
        (two, METHODS["soft"](length=3), "prompt sits inside the template"),
        (PREPEND, METHODS["prefix"](length=3, top_layers=1), "only the top 1 layers"),
    ]:
        session = Session.load(directory, task, method, cache=False)
        prompt = method.init(jax.random.key(0), session.model, session.frozen, session.n_virtual)
        assert message in peft_incompatibility(session.method, session.model, session.task.template)
        with pytest.raises(ExportError, match="--to plain"):
            export_peft(str(tmp_path / "x"), *_of(session, prompt), base_model="x")
        export_plain(str(tmp_path / "plain"), *_of(session, prompt), base_model="x")  # always possible
        description = json.load(open(tmp_path / "plain" / "prompt.json"))
        assert description["template"] == task.template.text and description["method"] == method.name


def test_plain_export_is_loadable_with_torch(tiny_hf, tmp_path):
    _, directory = tiny_hf("gpt2-50k")
    method = METHODS["prefix"](length=3, reparam_hidden=8)
    session = Session.load(directory, PREPEND, method, cache=False)
    prompt = method.init(jax.random.key(0), session.model, session.frozen, 0)
    export_plain(str(tmp_path), *_of(session, prompt), base_model="x")
    state = torch.load(tmp_path / "prompt.pt")
    k, v, _ = method.prefix(prompt, session.model, session.frozen, 0)
    np.testing.assert_array_equal(state["past_key_values"].numpy(), np.asarray(jnp.stack([k, v], axis=2)))
    assert {"prompt/inputs", "prompt/mlp/Dense_0/kernel"} <= set(state)


def _adapter(directory, config: dict | None, tensor=np.zeros((4, 32), np.float32)):
    from safetensors.numpy import save_file

    directory.mkdir(exist_ok=True)
    if tensor is not None:
        save_file({"prompt_embeddings": tensor}, str(directory / "adapter_model.safetensors"))
    if config is not None:
        (directory / "adapter_config.json").write_text(json.dumps(config))
    return str(directory)


def test_import_rejects_bad_adapters_in_one_line(tiny_hf, tmp_path):
    _, directory = tiny_hf("gpt2-50k")
    good = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4, "base_model_name_or_path": directory}
    task = _task_file(tmp_path)
    cases = [
        (_adapter(tmp_path / "a", good, np.zeros((4, 99), np.float32)),
         r"shape \(4, 99\); this model needs \(4, 32\)"),
        (str(tmp_path), "not a PEFT adapter"),
        (_adapter(tmp_path / "b", {k: v for k, v in good.items() if k != "num_virtual_tokens"}),
         "num_virtual_tokens must be an integer >= 1, got None"),
        (_adapter(tmp_path / "c", None), "not a PEFT adapter"),
    ]
    truncated = _adapter(tmp_path / "d", good)
    path = tmp_path / "d" / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:40])
    cases.append((truncated, "adapter_model.safetensors cannot be read"))
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "adapter_config.json").write_text("{oops")
    _adapter(tmp_path / "e", None)
    cases.append((str(tmp_path / "e"), "adapter_config.json cannot be read"))
    for adapter, message in cases:
        with pytest.raises(ExportError, match=message) as info:
            import_peft(adapter, str(tmp_path / "run"), task=task)
        assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()  # nothing was created


def test_import_never_replaces_a_run_unless_asked(tiny_hf, tmp_path):
    from jaxprompt.runs.layout import RunError, read_run_info

    _, directory = tiny_hf("gpt2-50k")
    task = _task_file(tmp_path)
    first = _adapter(tmp_path / "first", {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4,
                                          "base_model_name_or_path": directory}, np.ones((4, 32), np.float32))
    second = _adapter(tmp_path / "second", {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 3,
                                            "base_model_name_or_path": directory}, np.ones((3, 32), np.float32))
    run = str(tmp_path / "run")
    import_peft(first, run, task=task)
    before = {p: open(os.path.join(run, p), "rb").read() for p in ("run.json", "checkpoints.json")}
    with pytest.raises(RunError, match="already holds a run: pass --overwrite to replace it"):
        import_peft(second, run, task=task)
    assert before == {p: open(os.path.join(run, p), "rb").read() for p in before}
    import_peft(second, run, task=task, overwrite=True)
    assert read_run_info(run)["n_virtual"] == 3 and os.listdir(os.path.join(run, "last")) == ["0"]
    with pytest.raises(ExportError, match="export target .* is a file"):
        export_plain(os.path.join(run, "run.json"), None, None, None, None, None, base_model="x")
