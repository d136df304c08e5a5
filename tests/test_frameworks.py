"""optimjax optimizers inside Flax (nnx and linen) and optax's wrappers give the same numbers as a plain loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen, nnx
from flax.training import train_state

import optimjax as oj

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
