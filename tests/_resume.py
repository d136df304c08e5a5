"""Trajectories that start from a given state and step, run eagerly (no jit: short runs of 20-30 steps on four
small leaves are several times faster op by op than compiled, on a loaded CI machine), for the porting tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from cases import SHAPES


def run_optimjax(problem, tx, params=None, state=None, start=0, steps=None):
    """optimjax's parameters after each of steps start..start+steps-1 of `problem` (and the final state)."""
    params = jax.tree.map(jnp.asarray, problem.params0 if params is None else params)
    state = tx.init(params) if state is None else state
    out = []
    for t in range(start, start + (problem.steps - start if steps is None else steps)):
        grads = jax.tree.map(jnp.asarray, problem.grad(jax.tree.map(np.asarray, params), t))
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(jax.tree.map(np.asarray, params))
    return out, state


def run_torch(problem, optimizer, params, start=0, steps=None, scheduler=None):
    """torch's parameters (a dict of the tensors `optimizer` holds) after each of steps start..start+steps-1."""
    out = []
    for t in range(start, start + (problem.steps - start if steps is None else steps)):
        for k, g in problem.grad({k: p.detach().numpy() for k, p in params.items()}, t).items():
            params[k].grad = torch.tensor(g)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        out.append({k: p.detach().numpy().copy() for k, p in params.items()})
    return out


def torch_params(arrays: dict) -> dict:
    """torch leaf tensors (requires_grad) holding copies of `arrays`, in the table's order of leaves (SHAPES: the
    order of the torch optimizer's parameters, and of `paths`), whatever the order of `arrays`."""
    return {k: torch.tensor(np.array(arrays[k]), requires_grad=True) for k in SHAPES}
