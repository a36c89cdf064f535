"""Shared fixtures: tiny random GPT-2/OPT models built offline with `transformers`."""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO / "checkpoints" / "tiny-gpt2-wordnet"
sys.path.insert(0, str(REPO / "scripts" / "tools"))  # the pretraining tools (corpus, WordNet) are not installed


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
    """Tests rebuild the same steps as new closures; an on-disk XLA cache compiles each program once.
    The pytest-xdist workers and the subprocesses tests start share it (the workers' temp dirs sit
    side by side under the run's), so a program compiled once is read, not compiled again."""
    import jax

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    (root / "xla-cache").mkdir(exist_ok=True)
    settings = {"jax_compilation_cache_dir": str(root / "xla-cache"), "jax_persistent_cache_min_compile_time_secs": 0.2,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    for name, value in settings.items():
        os.environ[name.upper()] = str(value)  # the CLI / multi-device subprocesses the tests start
        jax.config.update(name, value)


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Each test file's compiled programs are released when it ends.

    XLA's CPU backend maps every compiled kernel's code and data into memory (three mappings per
    kernel); programs jitted at module level stay in JAX's caches for the life of the process. A
    test worker that ran half the suite held about 56,000 mappings, and the kernel's limit
    (`vm.max_map_count`, 65,530 by default) then made the next compilation fail with a segmentation
    fault or an abort, in whichever test came next."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


# name -> HF config kwargs. Large init std so logits are far from uniform and parity is meaningful.
# Each family's configs exercise its features: grouped-query heads, rope scaling, windows shorter
# than the test sequences, soft-capping, partial rotary, tied and untied heads, odd sizes.
TINY = {
    "gpt2": dict(model_type="gpt2", vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                 initializer_range=0.2, bos_token_id=0, eos_token_id=0),
    "gpt2-untied": dict(model_type="gpt2", vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                        initializer_range=0.2, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False),
    "opt": dict(model_type="opt", vocab_size=128, max_position_embeddings=64, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4, ffn_dim=64, init_std=0.2),
    "opt-post-ln-proj": dict(model_type="opt", vocab_size=128, max_position_embeddings=64, hidden_size=32,
                             num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, init_std=0.2,
                             word_embed_proj_dim=16, do_layer_norm_before=False),
    "opt-pre-ln-proj": dict(model_type="opt", vocab_size=128, max_position_embeddings=64, hidden_size=32,
                            num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, init_std=0.2,
                            word_embed_proj_dim=16),
    "opt-non-affine": dict(model_type="opt", vocab_size=128, max_position_embeddings=64, hidden_size=32,
                           num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, init_std=0.2,
                           layer_norm_elementwise_affine=False, enable_bias=False),
    # GQA (6 query heads on 2 key/value heads), Llama 3.1 rope scaling that changes the frequencies of
    # these short sequences, an odd vocabulary, untied head
    "llama": dict(model_type="llama", vocab_size=131, max_position_embeddings=64, hidden_size=48,
                  intermediate_size=64, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                  rope_theta=500.0, rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                  initializer_range=0.2, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
    # multi-query (one key/value head), linear rope scaling, an odd head count, tied head
    "llama-mqa-linear": dict(model_type="llama", vocab_size=128, max_position_embeddings=64, hidden_size=24,
                             intermediate_size=40, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
                             rope_scaling={"rope_type": "linear", "factor": 2.0}, initializer_range=0.2,
                             tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
    "mistral": dict(model_type="mistral", vocab_size=128, max_position_embeddings=64, hidden_size=32,
                    intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    sliding_window=4, initializer_range=0.2, bos_token_id=1, eos_token_id=2),
    "qwen2": dict(model_type="qwen2", vocab_size=128, max_position_embeddings=64, hidden_size=32,
                  intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  use_sliding_window=True, sliding_window=4, max_window_layers=1, initializer_range=0.2,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
    "qwen3": dict(model_type="qwen3", vocab_size=128, max_position_embeddings=64, hidden_size=32,
                  intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, initializer_range=0.2, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
    "gemma": dict(model_type="gemma", vocab_size=128, max_position_embeddings=64, hidden_size=32,
                  intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                  head_dim=16, initializer_range=0.2, bos_token_id=2, eos_token_id=1, pad_token_id=0),
    # caps small enough to bite, a window shorter than the sequences on every other layer, and an
    # attention scale that is not 1/sqrt(head_dim)
    "gemma2": dict(model_type="gemma2", vocab_size=128, max_position_embeddings=64, hidden_size=32,
                   intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=8, query_pre_attn_scalar=32, sliding_window=4, attn_logit_softcapping=2.0,
                   final_logit_softcapping=3.0, initializer_range=0.2, bos_token_id=2, eos_token_id=1,
                   pad_token_id=0),
    "gpt_neox": dict(model_type="gpt_neox", vocab_size=128, max_position_embeddings=64, hidden_size=64,
                     intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, rotary_pct=0.25,
                     use_parallel_residual=True, initializer_range=0.2, bos_token_id=0, eos_token_id=0),
    "gpt_neox-sequential": dict(model_type="gpt_neox", vocab_size=128, max_position_embeddings=64, hidden_size=32,
                                intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, rotary_pct=0.5,
                                use_parallel_residual=False, initializer_range=0.2, bos_token_id=0, eos_token_id=0),
    # with GPT-2's vocabulary, for tests that tokenize real text (export, CLI)
    "gpt2-50k": dict(model_type="gpt2", vocab_size=50257, n_positions=96, n_embd=32, n_layer=2, n_head=4, n_inner=64,
                     initializer_range=0.2),
    "opt-50k-proj": dict(model_type="opt", vocab_size=50257, max_position_embeddings=96, hidden_size=32,
                         num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, init_std=0.2,
                         word_embed_proj_dim=16, bos_token_id=50256, eos_token_id=50256, pad_token_id=1),
    "llama-50k": dict(model_type="llama", vocab_size=50257, max_position_embeddings=96, hidden_size=32,
                      intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      initializer_range=0.2, tie_word_embeddings=False, bos_token_id=50256, eos_token_id=50256),
    # an attention output projection with a bias, 3 layers (adaption prompts on the top 2)
    "llama-50k-bias": dict(model_type="llama", vocab_size=50257, max_position_embeddings=96, hidden_size=32,
                           intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                           attention_bias=True, initializer_range=0.2, tie_word_embeddings=False,
                           bos_token_id=50256, eos_token_id=50256),
    "gemma2-50k": dict(model_type="gemma2", vocab_size=50257, max_position_embeddings=96, hidden_size=32,
                       intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=8, query_pre_attn_scalar=8, sliding_window=8, initializer_range=0.2,
                       bos_token_id=50256, eos_token_id=50256, pad_token_id=50256),
    "gpt_neox-50k": dict(model_type="gpt_neox", vocab_size=50257, max_position_embeddings=96, hidden_size=32,
                         intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, rotary_pct=0.5,
                         initializer_range=0.2, bos_token_id=50256, eos_token_id=50256),
}


def hf_config(name: str, **overrides):
    from transformers import AutoConfig

    kw = {**TINY[name], **overrides}
    return AutoConfig.for_model(kw.pop("model_type"), **kw)


def build_hf_model(name: str, directory, seed: int = 0, **overrides):
    """A tiny random `transformers` model saved to `directory`; returns the torch model (eval mode).
    Norm weights and biases get noise too, so `(1 + w)` norms and biases are exercised. Models with
    GPT-2's vocabulary get the GPT-2 tokenizer beside them."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = hf_config(name, **overrides)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for key, param in model.named_parameters():
            if "norm" in key or key.endswith("bias"):
                param.add_(0.2 * torch.randn_like(param))
    model.save_pretrained(directory)
    if model.config.vocab_size >= 50257:
        from jaxprompt.data.tokenizer import Tokenizer

        Tokenizer.load(str(TOKENIZER_DIR)).save(str(directory))
    return model


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """name -> (torch model, checkpoint dir); built once per session."""
    pytest.importorskip("torch")
    cache = {}

    def get(name: str):
        if name not in cache:
            directory = tmp_path_factory.mktemp(name)
            cache[name] = (build_hf_model(name, directory), str(directory))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from jaxprompt.data.tokenizer import Tokenizer

    return Tokenizer.load(str(TOKENIZER_DIR))


# XLA's cheapest code generation. The suite compiles hundreds of small programs that then run for
# milliseconds; with these flags they compile about a quarter faster (measured on the prompt-method
# tests). Processes the tests start inherit them; the README's, which runs long programs, does not.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def pytest_configure(config):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
    # PyTorch's (and numpy's BLAS) OpenMP threads, one per core by default, wait for work by
    # spinning: beside the other worker's XLA they took its cores (the embedded model's
    # transformers generation ran 8.7 s alone and 80 s in the suite). One each per worker.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Weights & Biases (--log wandb) never reaches the network from a test
    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    # the on-disk prompt cache of every Session.load (and CLI subprocess) goes to a temporary
    # directory: tests never write to the user's ~/.cache
    import tempfile

    os.environ["JAXPROMPT_CACHE"] = tempfile.mkdtemp(prefix="jaxprompt-test-cache-")


def pytest_unconfigure(config):
    import shutil

    shutil.rmtree(os.environ.get("JAXPROMPT_CACHE", ""), ignore_errors=True)


# ---- JAX-only tiny models with the real GPT-2 vocabulary (for training tests) -------------------

# the JAX-only models of the training tests: the table's GPT-2-vocabulary variant of each family
GPT2_VOCABULARY = {"gpt2": "gpt2-50k", "opt": "opt-50k-proj", "llama": "llama-50k", "gemma2": "gemma2-50k",
                   "gpt_neox": "gpt_neox-50k"}


def tiny_config(model_type: str = "gpt2", **overrides):
    """The ModelConfig of `TINY[GPT2_VOCABULARY[model_type]]` (HF spelling, read by jaxprompt's own
    config reader), with `overrides` in jaxprompt's spelling."""
    from jaxprompt.models.registry import config_from_hf

    config = config_from_hf(TINY[GPT2_VOCABULARY[model_type]])
    if {"d_model", "n_heads"} & set(overrides) and "head_dim" not in overrides:  # the reader derived it
        overrides["head_dim"] = overrides.get("d_model", config.d_model) // overrides.get("n_heads", config.n_heads)
    return config.replace(**overrides)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A checkpoint directory (config.json, model.safetensors, tokenizer.json) of a tiny random GPT-2
    with GPT-2's vocabulary, written by jaxprompt itself (no torch needed)."""
    import jax

    from jaxprompt.data.tokenizer import Tokenizer
    from jaxprompt.models import Model
    from jaxprompt.models.convert import save_pretrained

    directory = tmp_path_factory.mktemp("tiny-model")
    model = Model(tiny_config())
    save_pretrained(model.config, model.init(jax.random.key(0), std=0.2), str(directory))
    Tokenizer.load(str(TOKENIZER_DIR)).save(str(directory))
    return str(directory)


@pytest.fixture(scope="session")
def tiny_lms():
    """model type -> (Model, params) of a tiny random model with GPT-2's 50257-token vocabulary."""
    import jax

    from jaxprompt.models import Model

    cache = {}

    def get(model_type: str = "gpt2"):
        if model_type not in cache:
            model = Model(tiny_config(model_type))
            params = model.init(jax.random.key(0), std=0.2)
            if model.arch.unit_offset_norms:  # norms at w = 0 would hide the (1 + w) form
                params = jax.tree_util.tree_map_with_path(
                    lambda path, x: x + 0.2 if path[-1].key == "scale" else x, params)
            cache[model_type] = (model, params)
        return cache[model_type]

    return get


@pytest.fixture(scope="session")
def tiny_lm(tiny_lms):
    """(Model, params) of a tiny random GPT-2 with GPT-2's 50257-token vocabulary."""
    return tiny_lms("gpt2")


def program_values(fn, *args):
    """(shape, dtype) of every value the program `fn(*args)` creates, nested programs (scans, jits,
    conditionals) included: what jaxprompt asks for, before any compiler decides how to run it."""
    import jax

    def subjaxprs(value):
        if hasattr(value, "eqns"):
            yield value
        elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
            yield value.jaxpr
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from subjaxprs(v)

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            yield from ((v.aval.shape, getattr(v.aval, "dtype", None)) for v in eqn.outvars if hasattr(v.aval, "shape"))
            for value in eqn.params.values():
                for sub in subjaxprs(value):
                    yield from walk(sub)

    return set(walk(jax.make_jaxpr(fn)(*args).jaxpr))


def write_task(directory, rows, template="Here are two {prompt} {word1} and", target=" {word2}", name="t",
               **keys) -> str:
    """A task file (TOML) over a JSONL of `rows` in `directory`; returns its path."""
    import json

    directory = pathlib.Path(directory)
    data = directory / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [f"name = {json.dumps(name)}", f"template = {json.dumps(template)}", f"target = {json.dumps(target)}",
             f"data = {json.dumps(str(data))}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    path = directory / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def snapshot(directory) -> dict:
    """Every file under `directory` with its bytes and modification time: a run "untouched" is equal."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = (f.read(), os.stat(path).st_mtime_ns)
    return out


ANTONYM_PAIRS = [("hot", "cold"), ("good", "bad"), ("big", "small"), ("up", "down"), ("left", "right"),
                 ("in", "out"), ("yes", "no"), ("day", "night"), ("fast", "slow"), ("old", "new"),
                 ("high", "low"), ("early", "late"), ("rich", "poor"), ("hard", "soft"), ("wet", "dry"),
                 ("open", "closed")]


# ---- trained tiny runs, each trained once per test session (shared by the xdist workers) ----------

# the settings of the suite's trained runs: a few steps, enough for a curve, a best checkpoint and results
FAST_RUN = ["--steps", "4", "--prompt-length", "3", "--batch-size", "8", "--eval-examples", "8", "--eval-every", "2",
            "--no-progress", "--lr", "0.05"]


def built_once(tmp_path_factory, name: str, build) -> pathlib.Path:
    """`build(directory)` once for the whole test session, whichever xdist worker asks first; the
    others wait for it and reuse the directory (a file lock beside it). Tests only read it."""
    import fcntl

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    directory = root / "shared-runs" / name
    directory.parent.mkdir(exist_ok=True)
    with open(directory.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (directory / ".built").exists():
            import shutil

            shutil.rmtree(directory, ignore_errors=True)  # a build another worker did not finish
            directory.mkdir()
            build(directory)
            (directory / ".built").touch()
    return directory


@pytest.fixture(scope="session")
def trained_run(tiny_model_dir, tmp_path_factory):
    """`jaxprompt train` of a soft prompt (P=3, 4 steps) on the antonyms task: the run directory."""
    from jaxprompt.cli.main import main

    def build(directory):
        assert main(["train", "--model", tiny_model_dir, "--out", str(directory / "run"), *FAST_RUN]) == 0

    return str(built_once(tmp_path_factory, "antonyms-soft", build) / "run")


@pytest.fixture(scope="session")
def seeds_run(tiny_model_dir, tmp_path_factory):
    """`jaxprompt train --seeds 2 --log tensorboard,wandb` (W&B offline) and what it printed, and, as
    the reference, `jaxprompt train --seed 1 --split-seed 0`: (population dir, seed-1 dir, printed)."""
    import subprocess
    import sys

    from jaxprompt.cli.main import main

    def build(directory):
        common = ["train", "--model", tiny_model_dir, *FAST_RUN]
        # in its own process: W&B leaves threads behind in the process that logged, and the worker
        # then compiled programs for other tests beside them (XLA crashed serialising one to its cache)
        population = subprocess.run([sys.executable, "-m", "jaxprompt", *common, "--seeds", "2", "--out",
                                     str(directory / "population"), "--log", "tensorboard,wandb", "--run-name",
                                     "seeds-run"], capture_output=True, text=True)
        assert population.returncode == 0, population.stdout[-2000:] + population.stderr[-2000:]
        (directory / "printed.txt").write_text(population.stdout)
        assert main([*common, "--seed", "1", "--split-seed", "0", "--no-baseline", "--out", str(directory / "seed1")]) == 0

    directory = built_once(tmp_path_factory, "seeds", build)
    return str(directory / "population"), str(directory / "seed1"), (directory / "printed.txt").read_text()


# The slow tier (`python -m pytest -q -m slow`; the default command leaves it out, pyproject.toml):
# whole runs on the embedded model, the examples, multi-process and 8-device subprocesses, sweeps,
# the server as a process, and the few other tests of more than about 15 seconds on a 2-core CPU. Each is an
# end-to-end run of code whose parts the default tier checks against the same references on
# smaller inputs; together they take about as long as the rest of the suite.
SLOW_FILES = {"test_distributed.py", "test_embedded_model.py", "test_sweep.py", "test_examples.py"}
SLOW_TESTS = {  # a test by name (every case), or one case by its id
    "test_parallel.py": {"test_every_strategy_trains_like_one_device",
                         "test_quantized_weights_load_into_shards_and_train_like_one_device"},
    "test_compile_cache.py": {"test_a_second_identical_run_reads_every_program_it_needs"},
    "test_choices.py": {"test_loss_choices_raises_validation_accuracy_on_supersense",
                        "test_evaluation_reports_accuracy_acc_norm_and_per_class_counts"},
    "test_cli.py": {"test_ctrl_c_while_training_commits_the_step_it_stops_at",
                    "test_multi_task_training_with_per_part_learning_rates_from_the_cli",
                    "test_plan_on_a_preset_over_eight_devices"},
    "test_lm_eval_backend.py": {"test_an_unknown_lm_eval_task_is_one_line"},
    "test_preemption.py": {"test_a_second_sigterm_while_saving_keeps_the_previous_commit"},
    "test_plan.py": {"test_flops_are_an_even_share_and_data_parallel_sends_the_gradient",
                     "test_smallest_model_axis_that_fits",
                     "test_the_cpu_target_plans_the_step_a_bf16_run_on_this_cpu_compiles",
                     "test_every_method_is_planned[pez-128]", "test_every_method_is_planned[relaxed-201028]",
                     "test_every_method_is_planned[adaption-258]", "test_every_method_is_planned[ptuning-None]",
                     "test_a_training_step_copies_no_frozen_weight[bfloat16-einsum-True]"},
    "test_loss.py": {"test_prompt_gradients_match_float64_finite_differences",  # PEFT's gradient stays in
                     "test_remat_same_gradient_less_memory",
                     "test_shared_prefix_equals_unshared[gpt2-ptuning]", "test_shared_prefix_equals_unshared[gpt2-prefix]"},
    "test_prompts.py": {"test_every_method_trains_on_held_out_examples[gpt2-soft-uniform]",
                        "test_every_method_trains_on_held_out_examples[gpt2-soft-sampled_vocab]",
                        "test_every_method_trains_on_held_out_examples[gpt2-ptuning-lstm-16]",
                        "test_every_method_trains_on_held_out_examples[llama-prefix-32-1]",
                        "test_every_method_trains_on_held_out_examples[gemma2-prefix-32-1]",
                        "test_prefix_init_makes_no_float32_copy_of_the_model"},
    "test_prompt_cache.py": {"test_cached_head_equals_recomputation[gemma2-soft]",
                             "test_cached_head_equals_recomputation[llama-prefix]"},
    "test_fused.py": {"test_each_family_computes_the_same_with_the_fused_kernel[mistral]"},
    "test_families.py": {"test_zero_gate_is_the_frozen_model[gpt2]", "test_zero_gate_is_the_frozen_model[llama-mqa-linear]"},
    "test_generate.py": {"test_bf16_decoding_on_cpu_converts_one_layer_at_a_time"},
}


# the longest files of each tier, in the order they start: pytest-xdist (`--dist loadfile`) hands
# out the first files in turn to its two workers, so these start at once and on alternate workers.
# Left to itself, xdist sorts files by their number of tests (pyproject.toml turns that off,
# `--no-loadscope-reorder`): a file with one long test then started last and ran alone at the end
LONGEST_FIRST = ("test_embedded_model.py", "test_examples.py", "test_distributed.py", "test_prompts.py",
                 "test_lm_eval_backend.py", "test_loss.py", "test_cli.py", "test_plan.py")


def pytest_collection_modifyitems(config, items):
    """`slow`: the slow tier (`SLOW_FILES`, `SLOW_TESTS`, tests that read the population run, and
    those marked in their files). The longest files first (`LONGEST_FIRST`); the rest keep their
    order."""
    for item in items:
        slow = SLOW_TESTS.get(item.path.name, ())
        if (item.path.name in SLOW_FILES or getattr(item, "originalname", item.name) in slow or item.name in slow
                or "seeds_run" in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))


# ---- serving: a model with a chat template, PEFT adapters in a directory, the app in-process -------

# exercises what transformers' environment sets: trim_blocks and lstrip_blocks (block tags on lines
# of their own), the special tokens as variables, a filter, raise_exception
CHAT_TEMPLATE = """{{ bos_token }}{% for message in messages %}
  {% if message['role'] == 'system' %}
<<SYS>> {{ message['content'] | trim }} <</SYS>>
  {% elif message['role'] == 'user' %}
User: {{ message['content'] }}
  {% elif message['role'] == 'assistant' %}
Assistant: {{ message['content'] }}{{ eos_token }}
  {% else %}
{{ raise_exception('roles are system, user and assistant, not ' + message['role']) }}
  {% endif %}
{% endfor %}
{% if add_generation_prompt %}
Assistant:{% endif %}"""


def with_chat_template(source, directory) -> str:
    """A copy of the checkpoint `source` whose tokenizer_config.json holds CHAT_TEMPLATE."""
    import json
    import shutil

    shutil.copytree(source, directory, dirs_exist_ok=True)
    path = pathlib.Path(directory) / "tokenizer_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}, indent=2))
    return str(directory)


@pytest.fixture(scope="session")
def chat_model_dir(tiny_model_dir, tmp_path_factory):
    """`tiny_model_dir` (GPT-2's tokenizer) with a chat template."""
    return with_chat_template(tiny_model_dir, tmp_path_factory.mktemp("chat-model"))


# the adapters of the serving tests: name -> (method, length)
ADAPTERS = {"soft0": ("soft", 3), "soft1": ("soft", 3), "prefix0": ("prefix", 2), "prefix1": ("prefix", 2)}


def write_adapters(model_dir: str, directory, adapters: dict = ADAPTERS) -> dict[str, str]:
    """PEFT adapters with random prompts far from the vocabulary (prompts that change the output),
    written by `jaxprompt export`'s writer: name -> path."""
    import jax

    from jaxprompt.prompts import METHODS
    from jaxprompt.runs.export import export_peft
    from jaxprompt.serving.prompts import adapter_task
    from jaxprompt.session import Session

    base = Session.load(model_dir, adapter_task(), METHODS["soft"](length=1), cache=False)
    out = {}
    for i, (name, (kind, length)) in enumerate(adapters.items()):
        method = METHODS[kind](length=length)
        prompt = method.init(jax.random.key(i), base.model, base.frozen, base.task.template.n_virtual(length))
        out[name] = export_peft(str(pathlib.Path(directory) / name), method, jax.tree.map(lambda x: 3.0 * x, prompt),
                                base.model, base.frozen, base.task.template, base_model=model_dir)
    return out


@pytest.fixture(scope="session")
def served_app(chat_model_dir, tmp_path_factory):
    """`jaxprompt serve --prompts DIR --max-resident 2` in this process (FastAPI's TestClient, an
    httpx client the official openai client can speak through): the model with a chat template,
    the four ADAPTERS on demand from a directory."""
    pytest.importorskip("fastapi")
    pytest.importorskip("prometheus_client")
    import types

    from fastapi.testclient import TestClient

    from jaxprompt.inference.chat import ChatTemplate
    from jaxprompt.serving.app import build_app
    from jaxprompt.serving.batcher import Batcher
    from jaxprompt.serving.library import Library
    from jaxprompt.serving.options import ServeOptions
    from jaxprompt.serving.prompts import load_engine

    directory = tmp_path_factory.mktemp("prompt-directory")
    paths = write_adapters(chat_model_dir, directory)
    options = ServeOptions(model=chat_model_dir, prompts=str(directory), max_resident=2, max_batch=4, max_tokens=24,
                           batch_wait_ms=1.0)
    engine, base = load_engine([], options)
    library = Library(engine, base, options.which, options.max_resident, str(directory))
    batcher = Batcher(engine, options.max_queue, options.max_batch, options.batch_wait_ms / 1000)
    app = build_app(engine, library, options, batcher, ChatTemplate.load(chat_model_dir))
    with TestClient(app) as client:
        yield types.SimpleNamespace(client=client, app=app, engine=engine, library=library, batcher=batcher,
                                    options=options, directory=str(directory), paths=paths, model=chat_model_dir)
    batcher.stop()
    library.close()
