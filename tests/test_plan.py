"""The memory plan: from shapes alone, it agrees with the compiled training step, shards frozen
weights as the mesh does, and finds the smallest model axis that fits."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import jax
import pytest
from conftest import tiny_config

from jaxprompt.models import Model
from jaxprompt.parallel.collectives import collective_bytes
from jaxprompt.parallel.plan import candidate_meshes, model_config, parse_bytes, plan, plans, smallest_model_axis


def test_parse_bytes():
    assert parse_bytes("80GB") == 80 * 10**9 and parse_bytes("16GiB") == 16 * 2**30 and parse_bytes("512") == 512
    for bad in ("lots", "-3GB", "0"):
        with pytest.raises(ValueError, match="memory size"):
            parse_bytes(bad)


def test_plan_agrees_with_the_real_training_step():
    """The plan of the embedded model on one device vs the memory XLA assigns to the step `fit`
    really runs (pmap, real arrays): within 10% (measured: 0.002%)."""
    from jaxprompt.data.batches import collate
    from jaxprompt.data.templates import Encoded
    from jaxprompt.models import Model, load_pretrained
    from jaxprompt.parallel.strategies import DataParallel
    from jaxprompt.paths import DEFAULT_MODEL
    from jaxprompt.prompts import METHODS
    from jaxprompt.prompts.loss import prompt_loss
    from jaxprompt.training.optim import OptimizerConfig, make_optimizer
    from jaxprompt.training.step import TrainState

    predicted = plan(DEFAULT_MODEL, 1, 1, 1, batch_size=16, prompt_length=8, text_tokens=24, dtype="float32")
    config, frozen = load_pretrained(DEFAULT_MODEL)
    model, method = Model(config), METHODS["soft"](length=8)
    prompt = method.init(jax.random.key(0), model, frozen, 8)
    optimizer = make_optimizer(OptimizerConfig(), prompt)
    examples = [Encoded([0] * 8 + list(range(100, 124)), list(range(8)) + [-1] * 24, 4) for _ in range(16)]
    dp = DataParallel(jax.devices()[:1])
    step = dp.train_step(prompt_loss(model, method), optimizer)
    state = dp.replicate(TrainState.create(prompt, optimizer, jax.random.PRNGKey(0)))
    analysis = step.lower(state, dp.put_frozen(frozen), dp.shard(collate(examples, 0, shared_len=8))).compile() \
        .memory_analysis()
    real = (analysis.argument_size_in_bytes + analysis.temp_size_in_bytes + analysis.output_size_in_bytes
            - analysis.alias_size_in_bytes)
    assert abs(predicted.total_bytes / real - 1) < 0.10, (predicted.total_bytes, real)
    assert predicted.frozen_bytes == sum(x.nbytes for x in jax.tree.leaves(frozen))


def test_the_cpu_target_plans_the_step_a_bf16_run_on_this_cpu_compiles():
    """`--target cpu` compiles the step as a bf16 run here holds its weights (`Session.load`: layers
    and vocabulary tables as bits, layers rematerialised), not the float32 proxy: its temporaries
    are within 10% of those of the step compiled on the session's own arrays, and below the
    float32 copy of the vocabulary table every program would hold without the bits; its total
    adds this process's resident memory, measured."""
    from jaxprompt.data.batches import collate
    from jaxprompt.data.tasks import BUILTIN
    from jaxprompt.data.templates import Encoded
    from jaxprompt.parallel.plan import process_memory
    from jaxprompt.parallel.strategies import DataParallel
    from jaxprompt.paths import DEFAULT_MODEL
    from jaxprompt.prompts import METHODS
    from jaxprompt.prompts.loss import prompt_loss
    from jaxprompt.session import Session
    from jaxprompt.training.optim import OptimizerConfig, make_optimizer
    from jaxprompt.training.step import TrainState

    shape = dict(batch_size=4, prompt_length=8, text_tokens=24, dtype="bfloat16")
    cpu = plan(DEFAULT_MODEL, 1, 1, 1, target="cpu", **shape)
    accelerator = plan(DEFAULT_MODEL, 1, 1, 1, **shape)
    assert accelerator.temp_upper_bound and not cpu.temp_upper_bound and cpu.remat and cpu.target == "cpu"
    method = METHODS["soft"](length=8)
    session = Session.load(DEFAULT_MODEL, BUILTIN["antonyms"], method, dtype="bfloat16", cache=False)
    prompt = method.init(jax.random.key(0), session.model, session.frozen, 8)
    optimizer = make_optimizer(OptimizerConfig(), prompt)
    examples = [Encoded([0] * 8 + list(range(100, 124)), list(range(8)) + [-1] * 24, 4) for _ in range(4)]
    dp = DataParallel(jax.devices()[:1])
    step = dp.train_step(prompt_loss(session.model, method), optimizer)
    state = dp.replicate(TrainState.create(prompt, optimizer, jax.random.PRNGKey(0)))
    real = step.lower(state, dp.put_frozen(session.frozen), dp.shard(collate(examples, 0, shared_len=8))).compile() \
        .memory_analysis().temp_size_in_bytes
    table_f32 = 4 * session.config.vocab_size * session.config.d_embed
    assert abs(cpu.temp_bytes / real - 1) < 0.10 and cpu.temp_bytes < table_f32, (cpu.temp_bytes, real, table_f32)
    assert 100e6 < cpu.host_bytes <= process_memory()["rss"] + 100e6, cpu.host_bytes  # Python and JAX are 0.2 GB
    assert cpu.total_bytes >= cpu.host_bytes + cpu.frozen_bytes + cpu.prompt_bytes + cpu.batch_bytes + cpu.temp_bytes
    assert "host (measured)" in cpu.table() and "resident memory" in cpu.table()


def test_the_model_comes_from_a_preset_a_directory_or_the_hugging_face_cache(tiny_model_dir, tmp_path):
    """Only the configuration is read: a preset needs nothing, a directory its config.json, a HF id
    the config.json in the HF cache layout (models--org--name/snapshots/<hash>/) under HF_HOME."""
    assert model_config("meta-llama/Llama-3.1-8B").n_layers == 32
    assert model_config(tiny_model_dir).d_model == 32
    home = tmp_path / "hf-home"
    snapshot = home / "hub" / "models--jaxprompt-test--tiny-gpt2" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(os.path.join(tiny_model_dir, "config.json"), snapshot)  # no weights
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    script = "from jaxprompt.parallel.plan import model_config; print(model_config('jaxprompt-test/tiny-gpt2').d_model)"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["32"], proc.stdout + proc.stderr[-2000:]


def test_smallest_model_axis_that_fits():
    """Pythia-70m (weights dominate a short batch) on 4 devices: each doubling of the model axis saves
    memory; the search returns the smallest axis within budget, or none."""
    meshes = candidate_meshes(4, batch_size=8)
    assert meshes == [(4, 1, False), (2, 2, False), (1, 4, False), (2, 2, True), (1, 4, True)]
    assert candidate_meshes(4, batch_size=2) == [(2, 2, False), (1, 4, False)]  # FSDP splits the batch 4 ways
    meshes = [m for m in meshes if not m.fsdp]
    found = plans("EleutherAI/pythia-70m", 4, meshes, batch_size=8, prompt_length=4, text_tokens=8, dtype="float32")
    by_axis = {p.model_axis: p for p in found}
    assert by_axis[1].total_bytes > by_axis[2].total_bytes > by_axis[4].total_bytes
    budget = (by_axis[1].total_bytes + by_axis[2].total_bytes) // 2  # room for model=2, not model=1
    assert smallest_model_axis(found, budget).model_axis == 2
    assert smallest_model_axis(found, by_axis[4].total_bytes // 2) is None


@pytest.mark.parametrize("method, prompt_floats", [
    ("soft", 4 * 32), ("pez", 4 * 32), ("relaxed", 4 * 50257),
    ("prefix", 2 * 4 * 2 * 4 * 8),  # layers x P x (k, v) x heads x head dim
    ("adaption", 2 * 4 * 32 + 2),  # layers x P x d_model, and one gate per layer
    ("ptuning", None)])
def test_every_method_is_planned(tiny_model_dir, method, prompt_floats):
    """Each method's step compiles in the plan; its prompt + optimizer bytes are the prompt's float32
    parameters three times (AdamW's two moments) plus a few scalars, counted by hand."""
    found = plan(tiny_model_dir, 1, 1, 1, batch_size=2, prompt_length=4, text_tokens=8, dtype="float32",
                 method=method)
    assert found.method == method and found.temp_bytes > 0 and method in found.step_text()
    if prompt_floats is not None:
        assert 0 <= found.prompt_bytes - 3 * 4 * prompt_floats < 256, found.prompt_bytes


def test_flops_are_an_even_share_and_data_parallel_sends_the_gradient(tiny_model_dir):
    """On 8 (virtual) devices every mesh gives each device about 1/8 of the one-device step's FLOPs
    (within 1.3x; FSDP's of the rematerialised step, each layer's weights gathered at least forward
    and backward), and with the batch split 8 ways (weights replicated) the only traffic is
    all-reduces, counted by hand at 2 x (n-1)/n x their bytes per device: the prompt's gradient, the
    loss and the token count (P x E + 2 float32), and the shared head, which the step computes once
    from the batch's first row (one device holds it) and sends to every device: its keys and values
    (2 x L x P x H x K float32), mask (P bools) and positions (2 x P int32)."""
    common = dict(batch_size=16, prompt_length=4, text_tokens=8, dtype="float32")
    one = plan(tiny_model_dir, 1, 1, 1, **common)
    meshes = [(8, 1), (4, 2), (2, 4), (1, 8)]
    found = plans(tiny_model_dir, 8, meshes + [(2, 4, True), (1, 8, True)], **common)
    fsdp, found = found[len(meshes):], found[:len(meshes)]
    for p in found:
        assert p.flops * 8 / one.flops < 1.3, (p.data, p.model_axis, p.flops * 8 / one.flops)
    # FSDP rematerialises each layer (its weights gathered again for the backward pass): an even
    # share of the rematerialised step, and every layer's weight shards gathered at least twice
    one_remat = plan(tiny_model_dir, 1, 1, 1, remat=True, **common)
    model = Model(tiny_config())
    layers = sum(x.size * 4 for x in jax.tree.leaves(model.param_shapes()[model.arch.stack_key]))
    for p in fsdp:
        n = p.model_axis
        assert p.flops * 8 / one_remat.flops < 1.3, (p.mesh, p.flops * 8 / one_remat.flops)
        assert p.collectives["all-gather"] >= 2 * (n - 1) / n * layers, (p.mesh, p.collectives, layers)
    data_parallel = found[0]
    P, E, L, H, K = 4, 32, 2, 4, 8  # tiny_config(): the prompt, the model's width, layers, heads, head width
    gradient, head = P * E * 4 + 2 * 4, 2 * L * P * H * K * 4 + P + 2 * P * 4
    assert set(data_parallel.collectives) == {"all-reduce"}, data_parallel.collectives
    sent, expected = data_parallel.collectives["all-reduce"], 2 * 7 / 8 * (gradient + head)
    assert expected - 2 <= sent <= expected + 2 * 7 / 8 * 4 * 4, (sent, expected)  # rounding, <= 4 more scalars


HLO = """HloModule step

%layer (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %ag = f32[1,4096,1024]{2,0,1} all-gather(%x), channel_id=2, replica_groups=mesh['axis_0'=1,'axis_1'=2,'axis_2'=1,'axis_3'=4], device_ids=([4,2]T(1,0)) {'axis_1'}, dimensions={1}, use_global_device_ids=true
}

ENTRY %main (a: f32[4]) -> f32[4] {
  %w = (s32[], f32[4]) while(%t), condition=%cond, body=%layer, backend_config={"known_trip_count":{"n":"32"}}
  %ar = f32[20,4096]{1,0} all-reduce(%g), channel_id=5, replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_0'}, use_global_device_ids=true, to_apply=%add
  %ar2 = f32[8]{0} all-reduce(%h), replica_groups=[4,2]<=[8], to_apply=%add
  %ag2 = f32[16]{0} all-gather(%k), replica_groups={{0,1,2,3}}, dimensions={0}
}
"""


def test_collective_bytes_reads_each_way_xla_writes_its_groups():
    """Groups as device lists, as iota shapes, and as named mesh axes (newer XLA: a group is the
    devices along the braced axes, here 2 of 8): each op's bytes by hand, a loop's by its trips.
    Reading the mesh form as all 8 devices once counted an FSDP gather over 2 devices at 7/8."""
    found = collective_bytes(HLO, 8)
    assert found == {"all-gather": int(4096 * 1024 * 4 * (1 / 2) * 32) + int(16 * 4 * 3 / 4),
                     "all-reduce": int(20 * 4096 * 4 * 2 * 7 / 8) + int(8 * 4 * 2 * 1 / 2)}, found


@pytest.mark.parametrize("dtype,attention,remat", [("float32", "einsum", False), ("float32", "xla", "dots"),
                                                   ("bfloat16", "einsum", True)])
def test_a_training_step_copies_no_frozen_weight(dtype, attention, remat):
    """The compiled step (state donated) writes no buffer of a frozen weight's shape: no copy,
    conversion or transpose of the weights. bf16 is held as bits, as a run on this CPU holds it. The
    check finds the copies of a step that converts bf16 layers to bits inside the program (as
    `as_bits` did on every backend with remat, a GPU's included)."""
    from jaxprompt.data.batches import collate
    from jaxprompt.data.templates import Encoded
    from jaxprompt.parallel.plan import weight_copies
    from jaxprompt.prompts import METHODS
    from jaxprompt.prompts.loss import prompt_loss
    from jaxprompt.training.optim import OptimizerConfig, make_optimizer
    from jaxprompt.training.step import TrainState, make_train_step

    config = tiny_config("llama", vocab_size=131, d_model=40, d_embed=40, d_ff=72, n_layers=3, n_heads=5,
                         n_kv_heads=1, head_dim=8)  # shapes no activation of this batch has
    model, method = Model(config, remat=remat, attention=attention), METHODS["soft"](length=4)
    weights = jax.tree.map(lambda x: x.astype(dtype), model.init(jax.random.key(0)))
    prompt = method.init(jax.random.key(1), model, weights, 4)
    optimizer = make_optimizer(OptimizerConfig(), prompt)
    state = TrainState.create(prompt, optimizer, jax.random.PRNGKey(0))
    batch = collate([Encoded([0] * 4 + [5, 6, 7, 8, 9, 10], list(range(4)) + [-1] * 6, 2)] * 2, 0, shared_len=4)
    step = jax.jit(make_train_step(prompt_loss(model, method), optimizer), donate_argnums=(0,))
    hlo = lambda frozen: step.lower(state, frozen, batch).compile().as_text()
    assert weight_copies(hlo(model.hold_as_bits(weights)), weights) == {}
    if dtype == "bfloat16":  # bits made inside the program: a copy of every stacked weight
        assert weight_copies(hlo(weights), weights).get("bitcast-convert", 0) >= 5


def test_a_quantized_plan_counts_the_integers_and_scales_a_quantized_load_holds(tiny_model_dir):
    """`plan --quantize int8`: the frozen bytes are those of the session's quantized weights (kernels
    of the tiny GPT-2 as int8 plus one float32 scale per output channel, counted by hand)."""
    from jaxprompt.models import Model, load_pretrained
    from jaxprompt.models.loading import load_config

    config = load_config(tiny_model_dir)
    L, D, F = config.n_layers, config.d_model, config.d_ff
    kernels = [(D, 3 * D), (D, D), (D, F), (F, D)]  # c_attn, attn c_proj, c_fc, mlp c_proj: (in, out)
    floats = 4 * Model(config).num_params()
    by_hand = floats - sum(L * i * o * (4 - 1) - L * o * 4 for i, o in kernels)
    _, held = load_pretrained(tiny_model_dir, quantize="int8")
    assert sum(x.nbytes for x in jax.tree.leaves(held)) == by_hand
    found = plan(tiny_model_dir, 1, 1, 1, batch_size=4, prompt_length=4, text_tokens=8, dtype="float32",
                 quantize="int8")
    assert found.frozen_bytes == found.frozen_total_bytes == by_hand and "matmul weights int8" in found.table()
