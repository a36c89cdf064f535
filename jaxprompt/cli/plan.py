"""`jaxprompt plan`: per-device memory of a training step on N devices, before the run (plan.py)."""

from __future__ import annotations

import dataclasses

from jaxprompt.cli.base import CLIError, Command, settings
from jaxprompt.config import TrainConfig, check_mesh, parse_mesh
from jaxprompt.parallel.plan import TARGETS, parse_bytes  # plan.py loads JAX only where it compiles
from jaxprompt.settings import AT_LEAST_1, Range, SettingError, Settings, setting


@dataclasses.dataclass(frozen=True)
class PlanOptions(Settings):
    """`jaxprompt plan`: per-device memory of a training step, before the run (plan.py). The model,
    dtype, quantization, batch size, prompt length, micro-batches and remat are the training settings' own flags."""

    devices: int = setting(1, "devices to plan for (the step is compiled for as many virtual CPU devices: they "
                              "need not exist here)", range=Range(1, 1024))
    mesh: str | None = setting(None, "the mesh data=A,model=B or data=A,fsdp=B to plan (A x B = --devices)",
                               shown_default="every mesh whose data axis divides the batch")
    device_memory: str | None = setting(None, "memory of one device, e.g. 80GB or 16GiB: whether the step fits, and "
                                              "the smallest model axis that does")
    text_tokens: int = setting(64, "tokens of text per example beside the prompt", range=AT_LEAST_1)
    target: str = setting("accelerator", "what runs the step: accelerator (GPU/TPU memory per device; bf16 "
                                         "temporaries as a float32 upper bound) or cpu (a run on this machine's "
                                         "CPU, one device: the step as it compiles there, and the process's own "
                                         "memory, measured)", choices=TARGETS)

    def check(self) -> None:
        check_mesh(self.mesh)
        if self.target == "cpu" and self.devices != 1:
            raise SettingError(f"--target cpu plans this machine's CPU as one device; --devices is {self.devices}")
        if self.mesh is not None and parse_mesh(self.mesh).devices != self.devices:
            raise SettingError(f"--mesh {self.mesh} has {parse_mesh(self.mesh).devices} devices; --devices is "
                               f"{self.devices}")
        if self.device_memory is not None:
            try:
                parse_bytes(self.device_memory)
            except ValueError as e:
                raise SettingError(f"--device-memory: {e}") from None


# the training settings a memory plan depends on, with their own flags
PLAN_TRAIN_SETTINGS = ("model", "method", "dtype", "quantize", "batch_size", "prompt_length", "accumulate", "remat")


def cmd_plan(args) -> int:
    from jaxprompt.models.quantize import check_quantizable
    from jaxprompt.parallel.plan import candidate_meshes, comparison, human, model_config, plans, smallest_model_axis

    opts = settings(args, PlanOptions)
    config = settings(args, TrainConfig)
    # an unknown model, or one the quantization cannot hold, is one line, before anything compiles
    check_quantizable(model_config(config.model), config.quantize)
    batch, micro = config.data.batch_size, config.data.accumulate
    memory = parse_bytes(opts.device_memory) if opts.device_memory is not None else None
    meshes = candidate_meshes(opts.devices, batch // micro)  # data axes that split every micro-batch evenly
    if opts.mesh is not None:
        chosen = parse_mesh(opts.mesh)
        if batch % (chosen.batch_split * micro):
            raise CLIError(f"--batch-size {batch} is not divisible by {chosen.split_text} x --accumulate {micro}")
        wanted = [chosen] + ([m for m in meshes if m != chosen] if memory is not None else [])
    else:
        wanted = meshes
    found = plans(config.model, opts.devices, wanted, batch, prompt_length=config.method.length,
                  text_tokens=opts.text_tokens, dtype=config.dtype, micro_batches=micro, remat=config.remat,
                  method=config.method.name, target=opts.target, quantize=config.quantize)
    print(found[0].table(memory) if opts.mesh is not None else comparison(found, memory, opts.device_memory))
    if memory is not None:
        best = smallest_model_axis(found, memory)
        if best is None:
            least = min(found, key=lambda p: p.total_bytes)
            print(f"\nno mesh over {opts.devices} device(s) fits {opts.device_memory} per device; the least memory, "
                  f"{human(least.total_bytes)}, is {least.mesh}")
        else:
            print(f"\nsmallest model axis that fits {opts.device_memory} per device: --mesh {best.mesh} "
                  f"({human(best.total_bytes)} per device)")
    return 0


PLAN = Command("plan", "per-device memory of a training step on N devices, before the run: frozen weights, prompt "
                       "and optimizer, temporaries; the smallest model axis that fits", cmd_plan,
               options=((TrainConfig, PLAN_TRAIN_SETTINGS), PlanOptions))
