"""docs/scaling.md's plan tables: what `jaxprompt plan` says for some presets in bfloat16, on one
device and on every mesh of 8 devices, against 80 GB and 16 GB devices.

    python scripts/bench/plan_table.py                    # the documented table (about 5 minutes on a 2-core CPU)
    python scripts/bench/plan_table.py --every-preset     # every preset on 8 devices, model=8 (a check that all plan)
    python scripts/bench/plan_table.py --layouts          # Llama-3.1-8B: XLA's layout against FSDP, batch 8 and 64

Nothing is allocated: each step is compiled on abstract arrays (jaxprompt/parallel/plan.py), for 8 devices
on 8 virtual CPU devices. The markdown goes to stdout (and to --markdown); how long each model's
plans took goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time

from jaxprompt.models import PRESETS
from jaxprompt.parallel.plan import candidate_meshes, human, parse_bytes, plans, smallest_model_axis

MODELS = ("meta-llama/Llama-3.1-8B", "mistralai/Mistral-7B-v0.3", "Qwen/Qwen2.5-7B", "facebook/opt-6.7b")
MEMORY = {"80 GB": parse_bytes("80GB"), "16 GB": parse_bytes("16GB")}
STEP = dict(batch_size=8, prompt_length=20, text_tokens=64, dtype="bfloat16")


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def readme_table() -> str:
    header = ["model", "devices", "mesh", "frozen", "prompt + Adam", "temporaries", "total", *[f"fits {m}" for m in
                                                                                             MEMORY]]
    rows, smallest = [], []
    for name in MODELS:
        t0 = time.perf_counter()
        one = plans(name, 1, [(1, 1)], **STEP)
        eight = plans(name, 8, [m for m in candidate_meshes(8, STEP["batch_size"]) if not m.fsdp], **STEP)
        print(f"{name}: {len(one) + len(eight)} plans in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for p in one + eight:
            rows.append([f"`{name}`", str(p.devices), p.mesh, human(p.frozen_bytes),
                         human(p.prompt_bytes), human(p.temp_bytes), f"**{human(p.total_bytes)}**",
                         *["yes" if p.fits(m) else "no" for m in MEMORY.values()]])
        for label, memory in MEMORY.items():
            best = smallest_model_axis(eight, memory)
            smallest.append(f"- `{name}`, 8 devices of {label}: " +
                            (f"`--mesh {best.mesh}`" if best else "no mesh fits"))
    note = (f"Batch {STEP['batch_size']}, a soft prompt of {STEP['prompt_length']} vectors, {STEP['text_tokens']} "
            f"text tokens per example, weights in {STEP['dtype']}; bytes per device. Temporaries are an upper bound "
            "(compiled in float32, see `jaxprompt/plan.py`).")
    return "\n".join([note, "", _row(header), _row(["---"] * len(header)), *map(_row, rows), "",
                      "Smallest model axis that fits:", "", *smallest])


def every_preset() -> str:
    header = ["model", "frozen (all)", "frozen / device", "temporaries", "total / device"]
    rows = []
    for name in PRESETS:
        t0 = time.perf_counter()
        p = plans(name, 8, [(1, 8)], **STEP)[0]
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        rows.append([f"`{name}`", human(p.frozen_total_bytes), human(p.frozen_bytes), human(p.temp_bytes),
                     human(p.total_bytes)])
    return "\n".join([f"8 devices, data=1,model=8; {STEP}", "", _row(header), _row(["---"] * len(header)),
                      *map(_row, rows)])


def layouts(model: str = "meta-llama/Llama-3.1-8B", batches=(8, 64)) -> str:
    """The two layouts of each 8-device mesh (`model=`: XLA computes with the shards where they lie,
    also with --remat; `fsdp=`: each layer gathered where it runs), by the bytes each device sends."""
    header = ["batch", "mesh", "remat", "sent / device / step", "by collective", "GFLOP / device", "temporaries",
              "total / device"]
    rows = []
    step = {**STEP, "batch_size": None}
    for batch in batches:
        step["batch_size"] = batch
        meshes = ((4, 2), (2, 4), (1, 8))
        t0 = time.perf_counter()  # two compiling subprocesses per batch: without remat (both layouts), with it
        plain = plans(model, 8, [(d, a, False) for d, a in meshes] + [(d, a, True) for d, a in meshes], **step)
        remat = plans(model, 8, list(meshes), remat=True, **step)
        print(f"batch {batch}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for i in range(len(meshes)):  # each mesh: model= without and with remat, then fsdp=
            for p in (plain[i], remat[i], plain[len(meshes) + i]):
                kinds = ", ".join(f"{kind} {human(n)}" for kind, n in sorted(p.collectives.items()))
                rows.append([str(batch), f"`{p.mesh}`", "yes" if p.remat or p.fsdp else "no",
                             f"**{human(sum(p.collectives.values()))}**", kinds, f"{p.flops / 1e9:.0f}",
                             human(p.temp_bytes), human(p.total_bytes)])
    note = (f"`{model}`, a soft prompt of {STEP['prompt_length']} vectors, {STEP['text_tokens']} text tokens per "
            f"example, weights in {STEP['dtype']}, 8 devices. Bytes and temporaries are upper bounds (compiled in "
            "float32, see `jaxprompt/plan.py`): bfloat16 moves half the bytes.")
    return "\n".join([note, "", _row(header), _row(["---"] * len(header)), *map(_row, rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every-preset", action="store_true", help="every preset on 8 devices, model=8")
    parser.add_argument("--layouts", action="store_true", help="Llama-3.1-8B: XLA's layout against FSDP")
    parser.add_argument("--markdown", help="also write the markdown here")
    args = parser.parse_args()
    text = every_preset() if args.every_preset else layouts() if args.layouts else readme_table()
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
