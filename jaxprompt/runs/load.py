"""Reading a run back: its settings (run.json), its frozen model and tokenizer, and its prompt.

Loading needs nothing from training: the prompt is the `params` of the committed checkpoint, read
as stored (no optimizer, no train-state template), and checked against the shapes its method
gives on this model. Everything that uses a trained prompt (eval, generate, inspect, export, serve,
lm-eval) loads it here.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.models import CheckpointError
from jaxprompt.prompts import method_from_spec
from jaxprompt.runs.checkpoint import Checkpointer
from jaxprompt.runs.layout import RUN_INFO, RunError, read_run_info, task_of_spec
from jaxprompt.session import Session
from jaxprompt.settings import one_line


def load_run(run_dir: str, which: str = "best", model: str | None = None, dtype: str | None = None,
             cache: bool | str = True, member: int | None = None, quantize: str | None = None
             ) -> tuple[Session, dict, dict]:
    """(session, prompt, run info) of a finished or interrupted run, from its run.json and checkpoint.

    A population's prompt is member `member`'s, or without it every member's, stacked [K, ...]
    (`info["members"]` says whose). `model`: the frozen model from another directory or HF id than
    the run's; `dtype`: another compute dtype than the run trained in; `quantize`: other frozen
    weights than the run trained on ("none", "int8", "int4"; None: the run's)."""
    info = read_run_info(run_dir)
    try:
        tasks = [task_of_spec(spec) for spec in info["tasks"]]
        method = method_from_spec(info["method"])
    except (ValueError, TypeError, KeyError) as e:
        raise RunError(f"{os.path.join(run_dir, RUN_INFO)} describes a task or method this jaxprompt cannot "
                       f"rebuild ({one_line(e)})") from None
    session = Session.load(model or info["model_dir"], tasks[0], method, dtype=dtype or info["config"].dtype,
                           cache=cache, tasks=tuple(tasks) if len(tasks) > 1 else (),
                           quantize=quantize or info["config"].quantize)
    K = len(info["members"])
    if member is not None and not 0 <= member < max(K, 1):
        raise RunError(f"--member {member}: {run_dir} trained {max(K, 1)} prompt(s); use "
                       + (f"0..{K - 1}" if K > 1 else "0 (or leave --member out)"))
    prompt = load_prompt(run_dir, session, which, members=K or None)
    return session, (prompt if member is None or not K else member_of(prompt, member)), info


def load_prompt(run_dir: str, session: Session, which: str = "best", members: int | None = None) -> dict:
    """The prompt pytree of a run's committed best (or last) checkpoint; best falls back to last
    in a run without validation. A population of `members` prompts: stacked [K, ...], each
    member's of its own best step. Its arrays are not committed to a device: they join the frozen
    weights wherever those lie (one device, or sharded over a mesh)."""
    ckpt = Checkpointer(run_dir)
    if which == "best" and ckpt.best_step() is None:
        which = "last"
    prompt = ckpt.restore_prompt(which)
    # the shapes this run's method gives on this model (eval_shape: nothing is computed)
    expected = jax.eval_shape(lambda frozen: session.method.init(jax.random.key(0), session.model, frozen,
                                                                 session.n_virtual), session.frozen)
    if members:
        expected = jax.tree.map(lambda s: jax.ShapeDtypeStruct((members, *s.shape), s.dtype), expected)
    found = jax.tree.map(lambda x: (tuple(x.shape), np.dtype(x.dtype)), prompt)
    wanted = jax.tree.map(lambda s: (tuple(s.shape), np.dtype(s.dtype)), expected)
    if jax.tree.structure(found, is_leaf=_is_shape) != jax.tree.structure(wanted, is_leaf=_is_shape) or \
            jax.tree.leaves(found, is_leaf=_is_shape) != jax.tree.leaves(wanted, is_leaf=_is_shape):
        raise CheckpointError(f"the {which} checkpoint of {run_dir} holds a prompt of another shape than its "
                              f"run.json describes on {session.model_id or 'this model'}")
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), prompt)


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], np.dtype)


def member_of(tree, k: int):
    """Member k's slice of a population's pytree (host or device arrays)."""
    return jax.tree.map(lambda x: x[k], tree)
