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
