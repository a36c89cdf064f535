"""What each device's collectives send per step, counted from a compiled step's HLO text: every
all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute, with the ring cost
model and the device groups XLA writes (explicit lists, iota forms and named meshes); ops inside
the scan over layers counted once per layer (`jaxprompt plan`'s sent/step).
"""
from __future__ import annotations

import math
import re

# ---- communication, counted from the compiled step's HLO -------------------------------------------

_COLLECTIVE = re.compile(r"=\s*(\(?[^=]*?\)?)\s+(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)"
                         r"(?:-start)?\(")
_SHAPE = re.compile(r"(pred|s8|u8|s16|u16|bf16|f16|s32|u32|f32|s64|u64|f64)\[([0-9,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8}
_GROUPS = re.compile(r"replica_groups=\{\{([0-9,]*)\}|replica_groups=\[(\d+),(\d+)\]")
# newer XLA: `replica_groups=mesh['axis_0'=2,'axis_1'=4], device_ids=(...) {'axis_1'}`, a group
# being the devices along the braced axes
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}")


def _shape_bytes(text: str) -> int:
    return sum(_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d) for t, dims in _SHAPE.findall(text))


def collective_bytes(hlo: str, devices: int) -> dict:
    """Bytes each device sends per step, by collective kind, from an SPMD-partitioned HLO module.

    Per op of result size S over a group of n devices (ring algorithms, the usual cost model):
    all-reduce 2 S (n-1)/n, all-gather and all-to-all S (n-1)/n, reduce-scatter S (n-1) (its
    result is one shard), collective-permute S. Ops inside a while loop (the scan over layers)
    count once per iteration (XLA's `known_trip_count`), nested loops multiplied."""
    computations, current = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if head and not line.startswith(" "):
            current = head.group(1)
            computations[current] = []
            if line.startswith("ENTRY"):
                computations["__entry__"] = current
        elif current is not None:
            computations[current].append(line)
    entry = computations.pop("__entry__", None)
    # how many times each computation runs per step: while bodies by their trip count
    runs = {entry: 1}
    order = [entry]
    while order:
        name = order.pop()
        for line in computations.get(name, []):
            trips = 1
            if " while(" in line:
                known = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
                trips = int(known.group(1)) if known else 1
            for callee in re.findall(r"(?:body|to_apply|calls|condition|branch_computations)=\{?%?([\w.\-]+)", line):
                if callee in computations and callee not in runs:
                    runs[callee] = runs[name] * (trips if " while(" in line else 1)
                    order.append(callee)
    out: dict = {}
    for name, lines in computations.items():
        for line in lines:
            match = _COLLECTIVE.search(line)
            if not match or name not in runs:
                continue
            kind, size = match.group(2), _shape_bytes(match.group(1))
            groups, mesh = _GROUPS.search(line), _MESH_GROUPS.search(line)
            if mesh:
                axes = {name: int(size) for name, size in re.findall(r"'(\w+)'=(\d+)", mesh.group(1))}
                n = math.prod(axes[name] for name in re.findall(r"'(\w+)'", mesh.group(2)))
            elif groups and groups.group(1) is not None:
                n = len([g for g in groups.group(1).split(",") if g])
            elif groups:
                n = int(groups.group(3))
            else:
                n = devices
            if n <= 1 and kind != "collective-permute":
                continue
            factor = {"all-reduce": 2 * (n - 1) / n, "all-gather": (n - 1) / n, "all-to-all": (n - 1) / n,
                      "reduce-scatter": n - 1, "collective-permute": 1}[kind]
            out[kind] = out.get(kind, 0) + int(size * factor * runs[name])
    return out
