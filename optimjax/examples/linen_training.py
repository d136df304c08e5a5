"""Flax linen: a `TrainState` holding an optimjax optimizer. `python -m optimjax.examples.linen_training`"""

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.training.train_state import TrainState

import optimjax


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.relu(nn.Dense(32)(x)))


def loss_fn(params, state, x, y):
    return jnp.mean((state.apply_fn(params, x) - y) ** 2)


@jax.jit
def train_step(state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, state, x, y)
    return state.apply_gradients(grads=grads), loss  # tx.update and optax.apply_updates, step += 1


def main(steps=200):
    x = jax.random.normal(jax.random.key(0), (128, 4))
    y = jnp.sin(x @ jnp.array([[1.0], [-2.0], [0.5], [0.0]]))
    params = MLP().init(jax.random.key(1), x)
    state = TrainState.create(apply_fn=MLP().apply, params=params, tx=optimjax.nadamw(1e-2, weight_decay=1e-2))
    for _ in range(steps):
        state, loss = train_step(state, x, y)
    print(f"Flax linen, optimjax.nadamw: loss {float(loss_fn(state.params, state, x, y)):.4f} after {steps} steps")
    return state


if __name__ == "__main__":
    main()
