"""Flax nnx: `nnx.Optimizer` with an optimjax optimizer. `python -m optimjax.examples.nnx_training`"""

import jax
import jax.numpy as jnp
from flax import nnx

import optimjax


def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


@nnx.jit
def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)  # the optimizer's state lives in `optimizer`, the params in `model`
    return loss


def main(steps=200):
    x = jax.random.normal(jax.random.key(0), (128, 4))
    y = jnp.sin(x @ jnp.array([[1.0], [-2.0], [0.5], [0.0]]))
    rngs = nnx.Rngs(1)
    model = nnx.Sequential(nnx.Linear(4, 32, rngs=rngs), nnx.relu, nnx.Linear(32, 1, rngs=rngs))
    optimizer = nnx.Optimizer(model, optimjax.nesterov(learning_rate=5e-2, momentum=0.9), wrt=nnx.Param)
    for _ in range(steps):
        train_step(model, optimizer, x, y)
    print(f"Flax nnx, optimjax.nesterov: loss {float(loss_fn(model, x, y)):.4f} after {steps} steps")
    return model


if __name__ == "__main__":
    main()
