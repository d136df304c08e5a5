"""optimjax optimizers inside Flax (nnx and linen), Haiku, Equinox and optax's wrappers.

Flax and optax's wrappers give the same numbers as a plain loop; the Haiku and Equinox examples of
optimjax/examples/ follow torch.optim (AdamW with a no-decay parameter group; Adam after clipping written out in
torch) in float64; every example in optimjax/examples/ trains when run as its docs page shows.
"""

import functools
import importlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx
from flax.training import train_state

import optimjax as oj
import cases

ROOT = Path(__file__).resolve().parent.parent
X = jax.random.normal(jax.random.key(0), (32, 3))
Y = X @ jnp.array([[1.0], [-2.0], [0.5]])


def plain_loop(tx, params, loss_fn, steps):
    state = tx.init(params)
    for _ in range(steps):
        grads = jax.grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_flax_nnx_optimizer_matches_plain_loop():
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    graphdef, params0 = nnx.split(model, nnx.Param)
    loss_of_params = lambda p: jnp.mean((nnx.merge(graphdef, p)(X) - Y) ** 2)
    expected = plain_loop(oj.nadamw(1e-2), params0, loss_of_params, 10)

    optimizer = nnx.Optimizer(model, oj.nadamw(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
        optimizer.update(model, grads)

    for _ in range(10):
        step(model, optimizer)
    np.testing.assert_allclose(model.kernel[...], expected["kernel"][...], rtol=1e-6)


def test_fused_step_in_an_nnx_training_step_matches_nnx_optimizer():
    """optimjax.fused inside a jitted, donating nnx training step: split the params, step, update the model."""
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    reference = nnx.Linear(3, 1, rngs=nnx.Rngs(0))  # its own arrays: the training step donates the model's
    kernel0 = jnp.array(model.kernel[...])
    fused = oj.fused.of(oj.adamw(1e-2, weight_decay=0.1))
    graphdef, params = nnx.split(model, nnx.Param)
    state = fused.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, state):
        grads = jax.grad(lambda p: jnp.mean((nnx.merge(graphdef, p)(X) - Y) ** 2))(params)
        return fused.step(grads, state, params)

    assert oj.fused.TARGET in train_step.lower(params, state).as_text()
    for _ in range(10):
        params, state = train_step(params, state)
    nnx.update(model, params)

    optimizer = nnx.Optimizer(reference, fused.optimizer, wrt=nnx.Param)
    for _ in range(10):
        optimizer.update(reference, nnx.grad(lambda m: jnp.mean((m(X) - Y) ** 2))(reference))
    np.testing.assert_allclose(model.kernel[...], reference.kernel[...], rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(model.kernel[...] - kernel0))) > 0.05  # it trained


def test_flax_linen_train_state_matches_plain_loop():
    module = linen.Dense(1)
    params0 = module.init(jax.random.key(1), X)
    loss_fn = lambda p: jnp.mean((module.apply(p, X) - Y) ** 2)
    state = train_state.TrainState.create(apply_fn=module.apply, params=params0, tx=oj.adam(1e-2, amsgrad=True))
    step = jax.jit(lambda s: s.apply_gradients(grads=jax.grad(loss_fn)(s.params)))
    for _ in range(10):
        state = step(state)
    expected = plain_loop(oj.adam(1e-2, amsgrad=True), params0, loss_fn, 10)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), state.params, expected)


def test_multisteps_accumulation_equals_averaged_gradients():
    """optax.MultiSteps(k=2) over g1, g2 makes one optimizer step with (g1 + g2) / 2."""
    params = {"w": jnp.array([1.0, -1.0, 2.0])}
    g = [{"w": jnp.array([0.1, 0.2, -0.3])}, {"w": jnp.array([0.3, -0.4, 0.1])}]
    tx = optax.MultiSteps(oj.rmsprop(1e-2, centered=True, momentum=0.9), every_k_schedule=2)
    state = tx.init(params)
    for grads in g:
        updates, state = tx.update(grads, state, params)
        params_after = optax.apply_updates(params, updates)
    mean = {"w": (g[0]["w"] + g[1]["w"]) / 2}
    inner = oj.rmsprop(1e-2, centered=True, momentum=0.9)
    expected, _ = inner.update(mean, inner.init(params), params)
    np.testing.assert_allclose(params_after["w"], params["w"] + expected["w"], rtol=1e-6)


def example_data():
    x = jax.random.normal(jax.random.key(0), (128, 4))
    return x, jnp.sin(x @ jnp.array([[1.0], [-2.0], [0.5], [0.0]]))


def torch_mlp_loss(x, y, layers):
    """Mean squared error of relu(x W0 + b0) W1 + b1, in torch; `layers` is [(W0, b0), (W1, b1)] with W as (in, out)."""
    import torch

    (w0, b0), (w1, b1) = layers
    return ((torch.relu(x @ w0 + b0) @ w1 + b1 - y) ** 2).mean()


def test_haiku_example_follows_torch_adamw_with_a_no_decay_group():
    import torch

    from optimjax.examples import haiku_training as example

    with cases.float64():
        x, y = example_data()
        params = example.model.init(jax.random.key(1), x)
        names = ["mlp/~/linear_0", "mlp/~/linear_1"]
        layers = [tuple(torch.tensor(np.asarray(params[n][k]), requires_grad=True) for k in ("w", "b")) for n in names]
        reference = torch.optim.AdamW(
            [{"params": [w for w, _ in layers], "weight_decay": 1e-2},
             {"params": [b for _, b in layers], "weight_decay": 0.0}],
            lr=1e-2, foreach=False,
        )
        opt_state = example.tx.init(params)
        tx, ty = torch.tensor(np.asarray(x)), torch.tensor(np.asarray(y))
        for _ in range(30):
            params, opt_state, _ = example.train_step(params, opt_state, x, y)
            reference.zero_grad()
            torch_mlp_loss(tx, ty, layers).backward()
            reference.step()
        for name, (w, b) in zip(names, layers):
            moved = np.abs(w.detach().numpy()).max()
            np.testing.assert_allclose(params[name]["w"], w.detach().numpy(), rtol=0, atol=1e-11 * moved)
            np.testing.assert_allclose(params[name]["b"], b.detach().numpy(), rtol=0, atol=1e-11)


def test_equinox_example_follows_torch_adam_after_global_norm_clipping():
    import equinox as eqx
    import torch

    from optimjax.examples import equinox_training as example

    with cases.float64():
        x, y = example_data()
        y = 5.0 * y  # larger gradients: clipped in many steps
        model = eqx.nn.MLP(in_size=4, out_size=1, width_size=32, depth=1, key=jax.random.key(1))
        # eqx.nn.Linear computes W x + b with W of shape (out, in): the torch model takes W transposed
        layers = [(torch.tensor(np.asarray(layer.weight).T.copy(), requires_grad=True),
                   torch.tensor(np.asarray(layer.bias), requires_grad=True)) for layer in model.layers]
        tensors = [t for layer in layers for t in layer]
        reference = torch.optim.Adam(tensors, lr=1e-2, foreach=False)
        opt_state = example.tx.init(eqx.filter(model, eqx.is_array))
        tx, ty = torch.tensor(np.asarray(x)), torch.tensor(np.asarray(y))
        clipped_steps = 0
        for _ in range(30):
            model, opt_state, _ = example.train_step(model, opt_state, x, y)
            reference.zero_grad()
            torch_mlp_loss(tx, ty, layers).backward()
            norm = torch.sqrt(sum((t.grad ** 2).sum() for t in tensors))
            if norm > 1.0:  # optax.clip_by_global_norm(1.0): g / |g| * 1.0 when |g| > 1.0
                clipped_steps += 1
                for t in tensors:
                    t.grad = t.grad / norm * 1.0
            reference.step()
        assert clipped_steps >= 10, f"clipped in only {clipped_steps} of 30 steps: the test would check too little"
        for layer, (w, b) in zip(model.layers, layers):
            np.testing.assert_allclose(layer.weight, w.detach().numpy().T, rtol=0, atol=1e-11)
            np.testing.assert_allclose(layer.bias, b.detach().numpy(), rtol=0, atol=1e-11)


EXAMPLES = ["haiku_training", "equinox_training", "linen_training", "nnx_training"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_trains_as_shown_in_the_docs(name, capsys):
    example = importlib.import_module(f"optimjax.examples.{name}")
    example.main(steps=150)
    line = capsys.readouterr().out.strip()
    loss = float(line.split("loss ")[1].split()[0])
    x, y = example_data()
    assert loss < 0.1 * float(jnp.var(y)), f"{name}: {line}"  # the loss at the start is about var(y) or more
    source = (ROOT / "optimjax" / "examples" / f"{name}.py").read_text(encoding="utf-8")
    assert len(source.splitlines()) < 40, f"{name}.py has grown past 40 lines"
