"""Data parallelism with `jax.pmap`: replicate the state, shard the batch, sum gradients.

The same code runs on 1 device, N GPUs, TPU cores, or several hosts after
`jax.distributed.initialize()` (each host feeds its own slice; the psum spans all devices).
The step itself knows nothing of devices: the cross-replica sum is passed in as `reduce`.
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np

from jaxprompt.train import LossFn, make_eval_step, make_train_step

AXIS = "data"


class DataParallel:
    def __init__(self, devices=None):
        self.devices = list(devices) if devices is not None else jax.local_devices()

    @property
    def n(self) -> int:
        return len(self.devices)

    def train_step(self, loss_fn: LossFn, optimizer, micro_batches: int = 1):
        """pmapped `(state, frozen, batch) -> (state, metrics)`; state donated, frozen not."""
        step = make_train_step(loss_fn, optimizer, reduce=partial(jax.lax.psum, axis_name=AXIS),
                               micro_batches=micro_batches)
        return jax.pmap(step, axis_name=AXIS, devices=self.devices, donate_argnums=(0,))

    def eval_step(self, loss_fn: LossFn):
        step = make_eval_step(loss_fn, reduce=partial(jax.lax.psum, axis_name=AXIS))
        return jax.pmap(step, axis_name=AXIS, devices=self.devices)

    def _stacked(self, per_device: list) -> jax.Array:
        """An array with a leading device axis from one [1, ...] piece per device (no host-side copies)."""
        shape = (self.n, *per_device[0].shape[1:])
        return jax.make_array_from_single_device_arrays(shape, self._sharding, per_device)

    @property
    def _sharding(self):
        mesh = jax.sharding.Mesh(np.array(self.devices), (AXIS,))
        return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))

    def replicate(self, tree):
        """One copy per device (the state, and the frozen weights once at start)."""
        return jax.tree.map(lambda x: self._stacked([jax.device_put(x[None], d) for d in self.devices]), tree)

    def shard(self, batch: dict) -> dict:
        """[B, ...] -> [n_devices, B / n_devices, ...], one slice per device."""

        def split(x):
            x = np.asarray(x)
            if x.shape[0] % self.n:
                raise ValueError(f"batch size {x.shape[0]} is not divisible by {self.n} devices")
            return self._stacked([jax.device_put(part[None], d)
                                  for part, d in zip(np.split(x, self.n), self.devices)])

        return jax.tree.map(split, batch)

    @staticmethod
    def unreplicate(tree):
        return jax.tree.map(lambda x: x[0], tree)


# ---- frozen weights sharded over a device mesh --------------------------------------------------

MESH_AXES = ("data", "model")


def parse_mesh(spec: str) -> dict[str, int]:
    """`"data=2,model=4"` -> {"data": 2, "model": 4}; an axis left out has size 1."""
    sizes = {"data": 1, "model": 1}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        if name not in sizes or not value.isdigit() or int(value) < 1:
            raise ValueError(f"bad mesh {spec!r}: use data=A,model=B with positive integers (e.g. data=2,model=4)")
        sizes[name] = int(value)
    return sizes


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
    """`jax.jit` over a `Mesh(data, model)`: frozen weights sharded along `model` (FSDP), the batch
    along `data`, the prompt and optimizer state replicated. The step is the same pure function as
    on one device; XLA inserts the collectives (gathers of weight shards, sums over the batch).

    Works across processes after `jax.distributed.initialize()`: `devices` are then all processes'
    devices, and each process feeds (and reads) only its own part of every batch.
    """

    def __init__(self, data: int = 1, model: int = 1, devices=None):
        devices = list(devices) if devices is not None else jax.devices()
        if data * model != len(devices):
            raise ValueError(f"mesh data={data},model={model} needs {data * model} devices; there are {len(devices)}")
        self.mesh = jax.sharding.Mesh(np.array(devices).reshape(data, model), MESH_AXES)
        self.data, self.model = data, model

    @property
    def n(self) -> int:
        return self.mesh.size

    def sharding(self, *spec) -> jax.sharding.NamedSharding:
        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(*spec))

    @property
    def replicated(self) -> jax.sharding.NamedSharding:
        return self.sharding()

    def frozen_shardings(self, frozen, n_layers: int):
        """A sharding per frozen leaf (arrays or shape structs), by `fsdp_spec`; pass
        `partial(mp.frozen_shardings, n_layers=L)` to `load_pretrained(shardings=...)` to load
        straight into shards."""
        return jax.tree.map(lambda x: jax.sharding.NamedSharding(self.mesh, fsdp_spec(x.shape, self.model, n_layers)),
                            frozen)

    def train_step(self, loss_fn, optimizer, frozen_shardings, **options):
        """jitted `(state, frozen, batch) -> (state, metrics)`; state donated, frozen not."""
        step = make_train_step(loss_fn, optimizer, **options)
        return jax.jit(step, in_shardings=(self.replicated, frozen_shardings, self.sharding("data")),
                       out_shardings=(self.replicated, self.replicated), donate_argnums=(0,))

    def eval_step(self, loss_fn, frozen_shardings):
        return jax.jit(make_eval_step(loss_fn), in_shardings=(self.replicated, frozen_shardings,
                                                              self.sharding("data"), self.replicated),
                       out_shardings=self.replicated)

    def put_replicated(self, tree):
        """The same value on every device (every process passes the same value)."""
        return jax.tree.map(lambda x: _global_array(np.asarray(x), self.replicated), tree)

    def put_frozen(self, frozen, shardings):
        return jax.tree.map(lambda x, s: _global_array(np.asarray(x), s), frozen, shardings)

    def put_batch(self, local_batch: dict) -> dict:
        """A batch from this process's rows: the global batch is every process's rows in process order."""
        if jax.process_count() == 1:
            for x in jax.tree.leaves(local_batch):
                if np.shape(x)[0] % self.data:
                    raise ValueError(f"batch size {np.shape(x)[0]} is not divisible by the data axis ({self.data})")
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.sharding("data"), np.asarray(x)),
                            local_batch)

    @staticmethod
    def get(tree):
        """Host copies of replicated arrays (each process reads its own replica)."""
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)


def _global_array(value: np.ndarray, sharding) -> jax.Array:
    """A global array from a host value every process holds in full (each process places the
    slices its own devices hold)."""
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
