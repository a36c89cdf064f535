"""A prompt-tuning run end to end: load, train, evaluate learned vs written, write the run directory;
and reading a run's trained prompt back (`load_run`).

What the run directory holds, and when it may be written, is rundir.py's; the curve is plot.py's.

A multi-process run (distributed.py) is one run: process 0 judges, names and locks the run
directory and the others follow its decisions; every process trains, checkpoints and evaluates
(with a mesh these are collective), and process 0 alone writes the files and prints.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.config import TrainConfig
from jaxprompt.prompts import method_from_spec
from jaxprompt.runs.checkpoint import Checkpointer
from jaxprompt.runs.layout import RUN_INFO, RunError, read_run_info, task_of_spec
from jaxprompt.session import Session
from jaxprompt.settings import one_line
from jaxprompt.training.optim import make_optimizer
from jaxprompt.training.population import member as member_prompt  # `member` is load_run's argument
from jaxprompt.training.population import member_optimizer, stack
from jaxprompt.training.step import TrainState

# ---- reading a run back --------------------------------------------------------------------------

def load_run(run_dir: str, which: str = "best", model: str | None = None, dtype: str | None = None,
             cache: bool | str = True, member: int | None = None) -> tuple[Session, dict, dict]:
    """(session, prompt, run info) of a finished or interrupted run, from its run.json and checkpoint.

    A population's prompt is member `member`'s, or without it every member's, stacked [K, ...]
    (`info["members"]` says whose)."""
    info = read_run_info(run_dir)
    config: TrainConfig = info["config"]
    try:
        tasks = [task_of_spec(spec) for spec in info["tasks"]]
        method = method_from_spec(info["method"])
    except (ValueError, TypeError, KeyError) as e:
        raise RunError(f"{os.path.join(run_dir, RUN_INFO)} describes a task or method this jaxprompt cannot "
                       f"rebuild ({one_line(e)})") from None
    session = Session.load(model or info["model_dir"], tasks[0], method, dtype=dtype or config.dtype, cache=cache,
                           tasks=tuple(tasks) if len(tasks) > 1 else ())
    K = len(info["members"])
    if member is not None and not 0 <= member < max(K, 1):
        raise RunError(f"--member {member}: {run_dir} trained {max(K, 1)} prompt(s); use "
                       + (f"0..{K - 1}" if K > 1 else "0 (or leave --member out)"))
    prompt = load_prompt(run_dir, session, which, config, info["steps"], members=K or None)
    return session, (prompt if member is None or not K else member_prompt(prompt, member)), info


def load_prompt(run_dir: str, session: Session, which: str = "best", config: TrainConfig | None = None,
                steps: int | None = None, members: int | None = None) -> dict:
    """The prompt pytree saved in a run's committed best (or last) checkpoint; best falls back to
    last in a run without validation. Its arrays are not committed to a device: they join the
    frozen weights wherever those lie (one device, or sharded over a mesh). A population of
    `members` prompts: stacked [K, ...], each member's of its own best step."""
    if config is None:
        info = read_run_info(run_dir)
        config, steps = info["config"], info["steps"]
    # the prompt's shapes only: eval_shape traces the init, compiles and computes nothing
    shapes = jax.eval_shape(lambda frozen: session.method.init(jax.random.key(0), session.model, frozen,
                                                               session.n_virtual), session.frozen)
    like_prompt = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    if members:
        like = stack([TrainState.create(like_prompt, member_optimizer(config.optimizer, like_prompt, steps, 0.0),
                                        jax.random.PRNGKey(0))] * members)
    else:
        optimizer = make_optimizer(config.optimizer, like_prompt, total_steps=steps)
        like = TrainState.create(like_prompt, optimizer, jax.random.PRNGKey(0))
    ckpt = Checkpointer(run_dir)
    if which == "best" and ckpt.best_step() is None:
        which = "last"
    state, _ = ckpt.restore(like, which)
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), state.params)
