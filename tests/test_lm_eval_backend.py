"""jaxprompt as an lm-eval model (lm_eval_backend.py) against lm-eval's own `hf` backend: on a local
multiple-choice YAML task over a JSONL file, the run's learned soft prompt (hf: its PEFT export via
`peft=`) and the bare model give the same acc / acc_norm and every request's log-likelihood
within 1e-4 in float32."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import ANTONYM_PAIRS, write_task

from jaxprompt.data.tasks import Task
from jaxprompt.data.templates import Template, TemplateError
from jaxprompt.prompts import METHODS
from jaxprompt.runs.export import export_peft
from jaxprompt.runs.peft_import import import_peft
from jaxprompt.session import Session

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("peft")
torch = pytest.importorskip("torch")

from jaxprompt.evaluation.lm_eval import JaxPromptLM, run_lm_eval  # noqa: E402

WORDS = [b for _, b in ANTONYM_PAIRS]
DOCS = [{"word1": a, "options": [b, WORDS[(i + 3) % len(WORDS)], "unbelievably " + WORDS[(i + 5) % len(WORDS)]],
         "gold": (i % 3 == 0) * 1} for i, (a, b) in enumerate(ANTONYM_PAIRS[:10])]


def _yaml_task(directory, name: str, body: str) -> str:
    """An lm-eval task `name` over a JSONL file of DOCS (`body`: its output type, choices or
    generation settings, metrics); returns the include directory."""
    data = directory / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (directory / f"{name}.yaml").write_text(f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_text: "{{{{word1}}}} is the opposite of"
""" + body)
    return str(directory)


def _lm_eval_task(directory) -> str:
    """A multiple-choice lm-eval task over a JSONL file; returns the include directory."""
    return _yaml_task(directory, "jp_opposites", """output_type: multiple_choice
doc_to_choice: "{{options}}"
doc_to_target: gold
metric_list:
  - metric: acc
  - metric: acc_norm
""")


def _per_request(results) -> list[list[float]]:
    return [[float(r[0]) for r in s["filtered_resps"]] for s in
            sorted(results["samples"]["jp_opposites"], key=lambda s: s["doc_id"])]


def _compare(ours, theirs):
    for key in ("acc,none", "acc_norm,none"):
        assert ours["results"]["jp_opposites"][key] == theirs["results"]["jp_opposites"][key]
    a, b = _per_request(ours), _per_request(theirs)
    assert len(a) == len(DOCS) and all(len(x) == 3 for x in a)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=0)
    assert np.ptp(np.asarray(a)) > 1.0  # the scores differ enough for the comparison to mean something


def _hf(directory, include, **extra):
    args = ",".join([f"pretrained={directory}", "dtype=float32", "device=cpu", "batch_size=4",
                     *(f"{k}={v}" for k, v in extra.items())])
    return lm_eval.simple_evaluate(model="hf", model_args=args, tasks=["jp_opposites"],
                                   task_manager=lm_eval.tasks.TaskManager(include_path=include, include_defaults=False),
                                   log_samples=True)


@pytest.fixture(scope="module")
def imported(tiny_hf, tmp_path_factory):
    """A learned soft prompt first in its template, exported to PEFT and imported as a run: (model
    directory, adapter, run directory, the include path of the lm-eval task)."""
    tmp_path = tmp_path_factory.mktemp("lm-eval-run")
    _, directory = tiny_hf("gpt2-50k")
    task_file = write_task(tmp_path, [{"word1": a, "word2": b} for a, b in ANTONYM_PAIRS], name="opposites",
                           template="{prompt} {word1} is the opposite of", target=" {word2}")
    from jaxprompt.data.tasks import get_task

    method = METHODS["soft"](length=4)
    session = Session.load(directory, get_task(task_file), method, cache=False)
    prompt = method.init(jax.random.key(0), session.model, session.frozen, session.n_virtual)
    prompt = {"embeddings": prompt["embeddings"] + 0.5 * jax.random.normal(jax.random.key(1), (4, 32))}
    adapter = str(tmp_path / "adapter")
    export_peft(adapter, session.method, prompt, session.model, session.frozen, session.task.template,
                base_model=directory)
    run_dir = import_peft(adapter, str(tmp_path / "run"), task=task_file, model=directory)
    return directory, adapter, run_dir, _lm_eval_task(tmp_path)


def test_learned_soft_prompt_matches_lm_evals_hf_backend_on_its_peft_export(imported):
    directory, adapter, run_dir, include = imported
    ours = run_lm_eval(JaxPromptLM.from_run(run_dir, batch_size=4), ["jp_opposites"], include, log_samples=True)
    _compare(ours, _hf(directory, include, peft=adapter))

    # the command: lm-eval's results JSON in the run directory; an unknown task is one line, exit 2
    from jaxprompt.cli.main import main

    assert main(["lm-eval", run_dir, "--tasks", "jp_opposites", "--include-path", include, "--limit", "4"]) == 0
    stored = json.load(open(f"{run_dir}/lm_eval.json"))["results"]["jp_opposites"]
    assert 0 <= stored["acc,none"] <= 1 and "acc_norm,none" in stored
    assert main(["lm-eval", run_dir, "--tasks", "jp_nonexistent", "--include-path", include]) == 2


def test_lm_evals_own_command_line_with_model_jaxprompt_gives_jaxprompt_lm_evals_numbers(imported, tmp_path):
    """`jaxprompt-lm-eval --model jaxprompt --model_args run=RUN` (lm-eval's CLI entry function, the
    model found through lm-eval's registry) scores every request as `jaxprompt lm-eval` does."""
    import glob

    from jaxprompt.cli.main import main
    from jaxprompt.evaluation.lm_eval_cli import main as lm_eval_cli

    _, _, run_dir, include = imported
    out = tmp_path / "out"
    lm_eval_cli(["--model", "jaxprompt", "--model_args", f"run={run_dir},batch_size=4", "--tasks", "jp_opposites",
                 "--include_path", include, "--log_samples", "--output_path", str(out)])
    (results,) = glob.glob(f"{out}/**/results_*.json", recursive=True)
    (samples,) = glob.glob(f"{out}/**/samples_jp_opposites_*.jsonl", recursive=True)
    theirs = json.load(open(results))["results"]["jp_opposites"]
    rows = sorted((json.loads(line) for line in open(samples)), key=lambda s: s["doc_id"])
    ours = run_lm_eval(JaxPromptLM.from_run(run_dir, batch_size=4), ["jp_opposites"], include, log_samples=True)
    np.testing.assert_allclose([[float(r[0]) for r in s["filtered_resps"]] for s in rows], _per_request(ours),
                               atol=1e-5, rtol=0)
    assert main(["lm-eval", run_dir, "--tasks", "jp_opposites", "--include-path", include]) == 0
    command = json.load(open(f"{run_dir}/lm_eval.json"))["results"]["jp_opposites"]
    for key in ("acc,none", "acc_norm,none"):
        assert theirs[key] == command[key] == ours["results"]["jp_opposites"][key]


def test_chat_templated_requests_match_lm_evals_hf_backend(tiny_hf, tmp_path):
    """--apply_chat_template: each request's context rendered by the model's chat template (ours:
    inference/chat.py; hf: transformers), its special tokens read as tokens; every log-likelihood
    within 1e-4 of the `hf` backend's."""
    from conftest import with_chat_template

    _, plain = tiny_hf("gpt2-50k")
    directory = with_chat_template(plain, tmp_path / "chat-model")
    include = _lm_eval_task(tmp_path)
    ours = run_lm_eval(JaxPromptLM.from_model(directory, batch_size=4), ["jp_opposites"], include, limit=4,
                       log_samples=True, apply_chat_template=True)
    theirs = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={directory},dtype=float32,device=cpu,"
                                     "batch_size=4", tasks=["jp_opposites"], limit=4, apply_chat_template=True,
                                     task_manager=lm_eval.tasks.TaskManager(include_path=include,
                                                                            include_defaults=False),
                                     log_samples=True)
    context = ours["samples"]["jp_opposites"][0]["arguments"][0][0]
    assert context.startswith("<|endoftext|>User: ") and context.endswith("Assistant:")  # the template's
    np.testing.assert_allclose(np.asarray(_per_request(ours)), np.asarray(_per_request(theirs)), atol=1e-4, rtol=0)
    assert ours["results"]["jp_opposites"]["acc,none"] == theirs["results"]["jp_opposites"]["acc,none"]


def test_bare_model_matches_lm_evals_hf_backend(tiny_hf, tmp_path):
    _, directory = tiny_hf("gpt2-50k")
    include = _lm_eval_task(tmp_path)
    ours = run_lm_eval(JaxPromptLM.from_model(directory, batch_size=4), ["jp_opposites"], include, log_samples=True)
    _compare(ours, _hf(directory, include))


def _generation_task(directory) -> str:
    """A generate_until lm-eval task over the same documents (greedy, cut at "." or a newline)."""
    return _yaml_task(directory, "jp_complete", """output_type: generate_until
doc_to_target: "{{options[0]}}"
generation_kwargs:
  until: [".", "\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
""")


def _generations(results) -> list[str]:
    return [s["filtered_resps"][0] for s in sorted(results["samples"]["jp_complete"], key=lambda s: s["doc_id"])]


def test_generate_until_equals_hf_backend_and_a_torch_greedy_loop_with_the_prompt(tiny_hf, tmp_path):
    """Bare model: lm-eval's `hf` backend generates the same texts. Learned prompt (first in its
    template): a greedy loop in PyTorch over [prompt; context] embeddings (PEFT's placement) does."""
    pt_model, directory = tiny_hf("gpt2-50k")
    include = _generation_task(tmp_path)
    bare = _generations(run_lm_eval(JaxPromptLM.from_model(directory, batch_size=4), ["jp_complete"], include,
                                    log_samples=True))
    theirs = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={directory},dtype=float32,device=cpu,"
                                     "batch_size=4", tasks=["jp_complete"],
                                     task_manager=lm_eval.tasks.TaskManager(include_path=include, include_defaults=False),
                                   log_samples=True)
    assert bare == _generations(theirs) and len(set(bare)) > 1

    task = Task(name="t", template=Template("{prompt} {word1} is the opposite of", " {word2}"), data="unused")
    method = METHODS["soft"](length=4)
    session = Session.load(directory, task, method, cache=False)
    prompt = {"embeddings": 0.5 * jax.random.normal(jax.random.key(1), (4, 32))}
    ours = _generations(run_lm_eval(JaxPromptLM(session, prompt, batch_size=4), ["jp_complete"], include,
                                    log_samples=True))
    expected = []
    with torch.no_grad():
        for d in DOCS:
            ids = session.tokenizer.encode(f"{d['word1']} is the opposite of")
            embeds = torch.cat([torch.tensor(np.asarray(prompt["embeddings"]))[None],
                                pt_model.get_input_embeddings()(torch.tensor([ids]))], 1)
            new = []
            for _ in range(6):
                token = int(pt_model(inputs_embeds=embeds).logits[0, -1].argmax())
                new.append(token)
                embeds = torch.cat([embeds, pt_model.get_input_embeddings()(torch.tensor([[token]]))], 1)
            text = session.tokenizer.decode(new)
            expected.append(min((text.split(stop)[0] for stop in (".", "\n")), key=len))
    assert ours == expected and ours != bare


def test_a_prompt_trained_inside_a_template_is_refused(tiny_lm, gpt2_tokenizer):
    model, frozen = tiny_lm
    task = Task(name="t", template=Template("Here are two {prompt} {word1} and", " {word2}"), data="unused")
    method = METHODS["soft"](length=4)
    session = Session(model, frozen, gpt2_tokenizer, task, method)
    with pytest.raises(TemplateError, match="trained inside the template 'Here are two {prompt} {word1} and'"):
        JaxPromptLM(session, method.init(jax.random.key(0), model, frozen, 4))


def test_an_unknown_lm_eval_task_is_one_line(tiny_lm, gpt2_tokenizer, tmp_path):
    model, frozen = tiny_lm
    task = Task(name="t", template=Template("{prompt} {word1} and", " {word2}"), data="unused")
    session = Session(model, frozen, gpt2_tokenizer, task, METHODS["soft"](length=4))
    with pytest.raises(TemplateError, match="lm-eval has no task 'no_such_task_anywhere'") as e:
        run_lm_eval(JaxPromptLM(session, None, learned=False), ["no_such_task_anywhere"], str(tmp_path))
    assert "\n" not in str(e.value)


def test_tasks_all_in_the_include_path_skip_indexing_lm_evals_own(tmp_path):
    """Tasks the include path defines are looked up there alone (lm-eval's own index takes 7-12 s
    to build); a name it lacks falls back to lm-eval's index (above: an unknown task is searched
    for there too, and named)."""
    from jaxprompt.evaluation.lm_eval import task_manager

    include = _lm_eval_task(tmp_path)
    assert task_manager(["jp_opposites"], include).all_tasks == ["jp_opposites"]
