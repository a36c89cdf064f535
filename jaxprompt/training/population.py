"""Many prompts at once: a population of K prompts trained by one compiled step.

Prompt tuning is known for its seed-to-seed variance (Lester et al. 2021 plot its spread over
several runs per setting), so one number per setting says little. A population trains K prompts together: the step is
`jax.vmap` of step.py's pure step over a leading member axis of the `TrainState` (prompt,
optimizer state, rng), with the frozen weights broadcast (`in_axes=None`): one frozen model, one
compiled program, K small prompts. Where one prompt's batch leaves an accelerator idle, K of them
fill it (scripts/bench/bench_population.py).

What a member varies (`Member`): its seed (the prompt's initialisation, the batch order and the
step rng, exactly as `TrainConfig.seed` does for a single run), its learning rate (kept in its
optimizer state by `optax.inject_hyperparams`, so one program serves every rate) and its
initialiser. Every member sees the same data split (`TrainConfig.data_seed`), so all are tested
on the same rows; member k is then the run `--seed <its seed> --split-seed <the run's> --lr <its
rate>` would train alone (tests/test_population.py).

Layouts: the state's leaves are [K, ...]; a training batch is [B, K, ...] (rows first, so the
data-parallel strategies split rows exactly as for one prompt) and a validation batch, the same
for every member, has no member axis.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprompt.config import Member, OptimizerConfig, TrainConfig
from jaxprompt.data.batches import Batches, collate
from jaxprompt.data.templates import Encoded
from jaxprompt.training.optim import make_optimizer
from jaxprompt.training.step import TrainState


def members_of(config: TrainConfig) -> tuple[Member, ...]:
    """`--seeds K`: seeds `--seed` .. `--seed` + K - 1, each with the run's rate and initialiser."""
    return tuple(Member(config.seed + k, config.optimizer.lr, config.method.init_from) for k in range(config.seeds))


def member_optimizer(c: OptimizerConfig, prompt: dict, total_steps: int | None, lr: float
                     ) -> optax.GradientTransformation:
    """`make_optimizer` with the learning rate an injected hyper-parameter, starting at `lr`.

    The rate lives in the optimizer state, so the update of every member is one function (the
    step compiles once) and each member's state carries its own rate. Any member's optimizer
    updates any member's state: it reads the rate from the state."""
    return optax.inject_hyperparams(lambda lr: make_optimizer(c, prompt, total_steps, lr=lr))(lr=lr)


def stack(trees: Sequence) -> object:
    """Pytrees of one shape -> one pytree with a leading member axis [K, ...]."""
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


def initial_state(prompts: Sequence[dict], members: Sequence[Member], c: OptimizerConfig,
                  total_steps: int | None) -> TrainState:
    """The population's first state: member k's is the state a single run with its seed and rate
    starts from (its prompt, `TrainState.create` with `PRNGKey(seed)`), stacked."""
    return stack([TrainState.create(p, member_optimizer(c, p, total_steps, m.lr), jax.random.PRNGKey(m.seed))
                  for p, m in zip(prompts, members)])


class MemberBatches:
    """Training batch s of every member, each in its own seed's order (`data.Batches`), padded to
    one shape and laid out [B, K, ...]. A pure function of the step, like `Batches`, so a resumed
    population sees the data an uninterrupted one does.

    The rows of all members are collated together: each row is padded to the longest member's
    length bucket (a padded position is masked out, so a member's loss is the one its own,
    shorter, batch gives, up to float32 summation order)."""

    def __init__(self, examples: Sequence[Encoded], batch_size: int, pad_id: int, seeds: Sequence[int],
                 shared_len: int = 0):
        self.orders = [Batches(examples, batch_size, pad_id, seed=s, shared_len=shared_len) for s in seeds]
        self.batch_size, self.pad_id, self.shared_len = batch_size, pad_id, shared_len

    def collate(self, rows: list) -> dict[str, np.ndarray]:
        return collate(rows, self.pad_id, "right", buckets=self.orders[0].buckets, shared_len=self.shared_len)

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        batch = self.collate([order.examples[i] for order in self.orders for i in order.indices(step)])
        K, B = len(self.orders), self.batch_size
        # [K * B, ...] member-major -> [K, B, ...] -> [B, K, ...]
        return {name: np.ascontiguousarray(x.reshape(K, B, *x.shape[1:]).swapaxes(0, 1)) for name, x in batch.items()}

