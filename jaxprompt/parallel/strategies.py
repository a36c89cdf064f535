"""How a training step is spread over devices: two strategies behind one interface (`Strategy`),
driven by the loop (training/loop.py). The step itself (training/step.py) knows nothing of devices.

- `DataParallel`: `jax.pmap`. The state and the frozen weights are replicated on every device,
  the batch is split, and the gradients are summed by a `psum` passed to the step as its
  `reduce`. The default, and the right choice whenever the frozen model fits one device beside
  its activations.
- `MeshParallel`: `jax.jit` over a `Mesh(data, model)`. The frozen weights are stored split along
  `model` (each large matrix along one axis), the prompt and optimizer state replicated. For models
  that do not fit one device, in two layouts:
  - `data=A,model=B`: the batch split along `data`; XLA's SPMD partitioner computes with the weight
    shards where they lie and moves activations (all-reduces, all-to-alls), tensor-parallel style.
  - `data=A,fsdp=B`: each layer's weights gathered where the layer runs and again for the backward
    pass (FSDP, `models.layers.gathered_layers`), the batch split over every device.
  Prompt tuning has no weight gradients to scatter, so FSDP's cost is the gathers alone: twice the
  layers' bytes per step at least, whatever the batch. For a Llama-3.1-8B step on 8 devices the
  first layout sends 3.3–88 times less at batch 8 and 64 (docs/scaling.md); `jaxprompt plan`
  counts both for any step.

Both run across processes after `jax.distributed.initialize()` (distributed.py): every process
computes the same global batch and places only its own rows (`put_batch`), and reads the
replicated state and metrics from its own devices (`get`).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Protocol

import jax
import numpy as np

from jaxprompt.config import MeshSpec, parse_mesh
from jaxprompt.models.layers.quantized import Quantized, is_quantized
from jaxprompt.models.layers.stack import gathered_layers
from jaxprompt.parallel.distributed import host, process_rows
from jaxprompt.training.step import LossFn, make_eval_step, make_train_step, vmap_eval_step, vmap_train_step

AXIS = "data"
MESH_AXES = ("data", "model")

__all__ = ["Strategy", "DataParallel", "MeshParallel", "make_strategy", "parse_mesh", "fsdp_spec"]


class Strategy(Protocol):
    """What the loop needs of a way to spread the step over devices."""

    n: int  # devices taking part, in every process
    batch_split: int  # the global batch is split this many ways: its size must divide by it
    load_shardings: Callable | None  # for `load_pretrained(shardings=...)`: None loads whole tensors

    def train_step(self, loss_fn: LossFn, optimizer, micro_batches: int = 1, population: bool = False) -> Callable:
        """`(state, frozen, batch) -> (state, metrics)` on placed arguments; the state is donated.
        `population`: the step of population.py, over a member axis (state [K], batch [B, K])."""

    def eval_step(self, loss_fn: LossFn, population: bool = False) -> Callable:
        """`(params, frozen, batch, step) -> {"loss_sum", "tokens"}` on placed arguments (each [K]
        for a population)."""

    def put_state(self, tree):
        """The train state (or any value every process holds in full), placed for the step."""

    def put_frozen(self, frozen):
        """The frozen weights, placed for the step (weights loaded already placed stay as they are)."""

    def put_batch(self, batch: dict) -> dict:
        """A global batch, as every process computes it: each process places only its own rows."""

    def get(self, tree):
        """Host (numpy) values of placed state or metrics, read in every process."""


def make_strategy(mesh: str | None, devices: list, n_layers: int) -> Strategy:
    """`DataParallel` over `devices`, or with `mesh` ("data=A,model=B" or "data=A,fsdp=B")
    `MeshParallel` over them."""
    if mesh is None:
        return DataParallel(devices)
    spec = parse_mesh(mesh)
    return MeshParallel(spec.data, spec.model, devices, n_layers=n_layers, fsdp=spec.fsdp)


# ---- data parallel: pmap ------------------------------------------------------------------------

class DataParallel:
    load_shardings = None

    def __init__(self, devices=None):
        # every process's devices, the same list in each process: pmap maps over the local ones
        # and its psum sums over all of them
        self.devices = list(devices) if devices is not None else jax.devices()
        self.local = [d for d in self.devices if d.process_index == jax.process_index()]

    @property
    def n(self) -> int:
        return len(self.devices)

    @property
    def batch_split(self) -> int:
        return self.n

    def train_step(self, loss_fn: LossFn, optimizer, micro_batches: int = 1, population: bool = False):
        """pmapped `(state, frozen, batch) -> (state, metrics)`; state donated, frozen not."""
        step = make_train_step(loss_fn, optimizer, reduce=partial(jax.lax.psum, axis_name=AXIS),
                               micro_batches=micro_batches)
        step = vmap_train_step(step) if population else step
        return jax.pmap(step, axis_name=AXIS, devices=self.devices, donate_argnums=(0,),
                        in_axes=(0, self._frozen_axis, 0))

    def eval_step(self, loss_fn: LossFn, population: bool = False):
        step = make_eval_step(loss_fn, reduce=partial(jax.lax.psum, axis_name=AXIS))
        step = vmap_eval_step(step) if population else step
        return jax.pmap(step, axis_name=AXIS, devices=self.devices, in_axes=(0, self._frozen_axis, 0, 0))

    def _stacked(self, per_device: list) -> jax.Array:
        """An array with a leading device axis from one [1, ...] piece per local device (no host-side copies)."""
        shape = (len(self.local), *per_device[0].shape[1:])
        return jax.make_array_from_single_device_arrays(shape, self._sharding, per_device)

    @property
    def _sharding(self):
        mesh = jax.sharding.Mesh(np.array(self.local), (AXIS,))
        return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))

    def replicate(self, tree):
        """One copy per local device (the state, and the frozen weights once at start), copied
        device to device from an array this process holds."""
        def one(x):
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                x = host(x)  # spread over processes: each gathers its own copy
            return self._stacked([jax.device_put(x[None], d) for d in self.local])

        return jax.tree.map(one, tree)

    put_state = replicate

    @property
    def _frozen_axis(self) -> int | None:
        """The frozen weights' axis in the pmapped step: on one device, none (pmap broadcasts them,
        and they stay the buffers they are); on several, the device axis of `replicate`."""
        return None if len(self.devices) == 1 else 0

    def put_frozen(self, frozen):
        """One copy per device. On one device, the weights as they are: `replicate` builds its
        [1, ...] stack by copying, a second copy of the model beside the session's."""
        return frozen if self._frozen_axis is None else self.replicate(frozen)

    def shard(self, local_batch: dict) -> dict:
        """This process's rows [b, ...] -> [local devices, b / local devices, ...], a slice per device."""

        def split(x):
            x = np.asarray(x)
            if x.shape[0] % len(self.local):
                raise ValueError(f"batch size {x.shape[0]} is not divisible by {len(self.local)} devices")
            return self._stacked([jax.device_put(part[None], d)
                                  for part, d in zip(np.split(x, len(self.local)), self.local)])

        return jax.tree.map(split, local_batch)

    def put_batch(self, batch: dict) -> dict:
        rows = len(next(iter(batch.values())))
        if rows % self.n:
            raise ValueError(f"batch size {rows} is not divisible by {self.n} devices")
        return self.shard(process_rows(batch))

    @staticmethod
    def unreplicate(tree):
        return jax.tree.map(lambda x: x[0], tree)

    def get(self, tree):
        return jax.tree.map(np.asarray, self.unreplicate(tree))


# ---- frozen weights sharded over a device mesh: jit ------------------------------------------------

def fsdp_spec(shape: tuple[int, ...], model_size: int, n_layers: int) -> jax.sharding.PartitionSpec:
    """FSDP-style placement of one frozen leaf: its largest axis that `model_size` divides is split
    along `model` (never the layer axis of a layer-stacked leaf, which `lax.scan` slices), so XLA
    gathers each layer's weights when the scan reaches it. Leaves with no such axis are replicated."""
    P = jax.sharding.PartitionSpec
    if model_size == 1:
        return P()
    first = 1 if len(shape) >= 2 and shape[0] == n_layers else 0
    candidates = [a for a in range(first, len(shape)) if shape[a] % model_size == 0]
    if not candidates:
        return P()
    axis = max(candidates, key=lambda a: shape[a])
    return P(*[("model" if a == axis else None) for a in range(len(shape))])


class MeshParallel:
    """`jax.jit` over a `Mesh(data, model)`: frozen weights stored split along `model`, the batch
    along `data` (with `fsdp`, along both, each layer gathered where it runs), the prompt and
    optimizer state replicated. The step is the same pure function as on one device; XLA inserts
    the collectives.

    The mesh is `devices` in order, `model` the fast axis: a process's devices hold neighbouring
    weight shards (on a GPU node, the gathers stay on its links) and the data axis spans hosts.
    Across processes each process places, and reads, only what its own devices hold.
    """

    def __init__(self, data: int = 1, model: int = 1, devices=None, n_layers: int | None = None,
                 fsdp: bool = False):
        devices = list(devices) if devices is not None else jax.devices()
        if data * model != len(devices):
            raise ValueError(f"mesh data={data},model={model} needs {data * model} devices; there are {len(devices)}")
        self.mesh = jax.sharding.Mesh(np.array(devices).reshape(data, model), MESH_AXES)
        self.data, self.model = data, model
        self.n_layers = n_layers
        self.spec = MeshSpec(data, model, fsdp)  # with fsdp, layers gathered where they run, the batch over every device

    @property
    def n(self) -> int:
        return self.mesh.size

    @property
    def batch_split(self) -> int:
        return self.spec.batch_split

    @property
    def batch_sharding(self) -> jax.sharding.NamedSharding:
        """Rows split along `data` (and along `model` too under FSDP)."""
        return self.sharding(MESH_AXES if self.spec.fsdp else "data")

    def _traced(self, step: Callable) -> Callable:
        """`step`, traced under FSDP with each layer's weights gathered where it runs (`gathered_layers`)."""
        if not self.spec.fsdp:
            return step

        def traced(*args):
            with gathered_layers(self.replicated):
                return step(*args)

        return traced

    def sharding(self, *spec) -> jax.sharding.NamedSharding:
        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(*spec))

    @property
    def replicated(self) -> jax.sharding.NamedSharding:
        return self.sharding()

    def frozen_shardings(self, frozen, n_layers: int | None = None):
        """A sharding per frozen leaf (arrays or shape structs), by `fsdp_spec`; `load_pretrained(
        shardings=mp.frozen_shardings)` loads straight into them. A quantized kernel's scales are
        split along the axis its values are, where they divide (each device then holds the scales of
        its own weights), else replicated: per-channel scales [L, 1, O] of values split along I."""
        n_layers = self.n_layers if n_layers is None else n_layers
        if n_layers is None:
            raise ValueError("frozen_shardings needs the model's number of layers (MeshParallel(n_layers=...))")
        named = lambda spec: jax.sharding.NamedSharding(self.mesh, spec)

        def one(x):
            if not is_quantized(x):
                return named(fsdp_spec(x.shape, self.model, n_layers))
            values = fsdp_spec(x.values.shape, self.model, n_layers)
            scales = [axis if axis is None or x.scales.shape[a] % self.model == 0 else None
                      for a, axis in enumerate(values)]
            return Quantized(named(values), named(jax.sharding.PartitionSpec(*scales)), x.format)

        return jax.tree.map(one, frozen, is_leaf=is_quantized)

    @property
    def load_shardings(self):
        return self.frozen_shardings

    def train_step(self, loss_fn: LossFn, optimizer, micro_batches: int = 1, population: bool = False):
        """jitted `(state, frozen, batch) -> (state, metrics)`; state donated, frozen not. The frozen
        weights keep the shardings they were placed with (a population's batch [B, K] is split
        along its rows, like one prompt's)."""
        step = make_train_step(loss_fn, optimizer, micro_batches=micro_batches)
        step = vmap_train_step(step) if population else step
        return jax.jit(self._traced(step), in_shardings=(self.replicated, None, self.batch_sharding),
                       out_shardings=(self.replicated, self.replicated), donate_argnums=(0,))

    def eval_step(self, loss_fn: LossFn, population: bool = False):
        step = vmap_eval_step(make_eval_step(loss_fn)) if population else make_eval_step(loss_fn)
        return jax.jit(self._traced(step), in_shardings=(self.replicated, None, self.batch_sharding, self.replicated),
                       out_shardings=self.replicated)

    def put_replicated(self, tree):
        """The same value on every device (every process passes the same value)."""
        return jax.tree.map(lambda x: _global_array(x, self.replicated), host(tree))

    put_state = put_replicated

    def put_frozen(self, frozen):
        """Each leaf sharded by `frozen_shardings`; leaves already placed so (loaded straight into
        shards) are kept as they are."""
        def place(x, sharding):
            if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
                return x
            return _global_array(host(x), sharding)

        return jax.tree.map(place, frozen, self.frozen_shardings(frozen))

    def local_rows(self, batch: dict) -> dict:
        """This process's rows of a global batch: those of the data shards its devices hold, in order."""
        rows = len(next(iter(batch.values())))
        if rows % self.batch_split:
            raise ValueError(f"batch size {rows} is not divisible by {self.spec.split_text}")
        held = sorted({(index[0].start or 0, index[0].stop or rows) for index in
                       self.batch_sharding.addressable_devices_indices_map((rows,)).values()})
        return {k: np.concatenate([np.asarray(v)[a:b] for a, b in held]) for k, v in batch.items()}

    def put_batch(self, batch: dict) -> dict:
        local = self.local_rows(batch)
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, v, np.shape(batch[k]))
                for k, v in local.items()}

    @staticmethod
    def get(tree):
        """Host copies of placed arrays (a replicated one is read from this process's own replica)."""
        return host(tree)


def _global_array(value: np.ndarray, sharding) -> jax.Array:
    """A global array from a host value every process holds in full (each process places the
    slices its own devices hold)."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
