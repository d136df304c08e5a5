"""A whole PyTorch recipe ported: a small MLP trained in torch (autograd, torch.optim.AdamW with two param groups,
clip_grad_norm_, OneCycleLR cycling the lr and beta1) and in JAX (jax.grad, optimjax) from the same weights on the
same minibatches, in float64: the parameters stay within 1e-10 of their displacement for 100 steps, and a JAX run
resumed from torch's checkpoint at step 50 (optimjax.port) lands on torch's step 100 too.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import optimjax
from cases import float64
from optimjax import port

STEPS, HALF, BATCH = 100, 50, 16
TOL = 1e-10
LAYERS = ("fc1", "fc2")
# torch's parameter order: group 0 (decay) holds the weights, group 1 (no decay) the biases; a Linear weight
# (out, in) is a Dense kernel (in, out)
PATHS = [port.transposed((name, "kernel")) for name in LAYERS] + [(name, "bias") for name in LAYERS]


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, 6))
    y = np.sin(x @ rng.normal(size=(6, 1))) + 0.1 * rng.normal(size=(256, 1))
    batches = [rng.choice(len(x), BATCH, replace=False) for _ in range(STEPS)]
    return x, y, batches


def torch_recipe(model):
    decay = [model[0].weight, model[2].weight]
    no_decay = [model[0].bias, model[2].bias]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=1e-3, foreach=False)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[3e-2, 1e-2], total_steps=STEPS)
    return optimizer, scheduler


def jax_recipe():
    b1 = optimjax.schedules.one_cycle_momentum(total_steps=STEPS)  # OneCycleLR's cycle_momentum=True on beta1

    def group(max_lr, weight_decay):
        lr = optimjax.schedules.one_cycle_lr(max_lr, total_steps=STEPS)
        return optax.inject_hyperparams(optimjax.adamw)(learning_rate=lr, b1=b1, weight_decay=weight_decay)

    labels = lambda params: jax.tree.map(lambda x: "decay" if x.ndim == 2 else "no_decay", params)  # noqa: E731
    return optax.chain(optimjax.clip_grad_norm(1.0),
                       optax.partition({"decay": group(3e-2, 0.05), "no_decay": group(1e-2, 0.0)}, labels))


def to_jax(model):
    return {name: {"kernel": jnp.asarray(layer.weight.detach().numpy().T), "bias": jnp.asarray(layer.bias.detach()
                                                                                                 .numpy())}
            for name, layer in zip(LAYERS, (model[0], model[2]))}


def loss(params, x, y):
    h = jnp.tanh(x @ params["fc1"]["kernel"] + params["fc1"]["bias"][None, :])
    return jnp.mean((h @ params["fc2"]["kernel"] + params["fc2"]["bias"][None, :] - y) ** 2)


def run_torch(model, optimizer, scheduler, x, y, batches, start, stop, checkpoint=None):
    out = []
    for t in range(start, stop):
        if t == checkpoint:
            saved = (copy.deepcopy(optimizer.state_dict()), to_jax(model))
        xb, yb = torch.tensor(x[batches[t]]), torch.tensor(y[batches[t]])
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(xb), yb).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        scheduler.step()
        out.append(to_jax(model))
    return out, (saved if checkpoint is not None else None)


def run_jax(tx, params, state, x, y, batches, start, stop):
    @jax.jit
    def step(params, state, xb, yb):
        grads = jax.grad(loss)(params, xb, yb)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    out = []
    for t in range(start, stop):
        params, state = step(params, state, jnp.asarray(x[batches[t]]), jnp.asarray(y[batches[t]]))
        out.append(params)
    return out


def relative_error(ours, reference, start):
    diff = max(float(jnp.max(jnp.abs(a - b))) for p, q in zip(ours, reference)
               for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q)))
    moved = max(float(jnp.max(jnp.abs(a - b))) for p in reference
                for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(start)))
    assert moved > 0.05, "the recipe barely moved the parameters: the comparison would be vacuous"
    return diff / moved


def test_recipe_float64_and_resumed_from_a_torch_checkpoint():
    with float64():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        x, y, batches = data()
        params0 = to_jax(model)
        optimizer, scheduler = torch_recipe(model)
        reference, (saved, params_half) = run_torch(model, optimizer, scheduler, x, y, batches, 0, STEPS, HALF)

        tx = jax_recipe()
        ours = run_jax(tx, params0, tx.init(params0), x, y, batches, 0, STEPS)
        assert ours[-1]["fc1"]["kernel"].dtype == jnp.float64
        err = relative_error(ours, reference, params0)
        assert err < TOL, f"whole recipe: {err:.2e} of the displacement from torch"

        state = port.load_state_dict(tx, params_half, saved, PATHS)
        resumed = run_jax(tx, params_half, state, x, y, batches, HALF, STEPS)
        err = relative_error(resumed, reference[HALF:], params0)
        assert err < TOL, f"resumed at step {HALF} from torch's checkpoint: {err:.2e}"
