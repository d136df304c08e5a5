"""Haiku: an `hk.transform`ed MLP; AdamW, no decay on biases. `python -m optimjax.examples.haiku_training`"""

import haiku as hk
import jax
import jax.numpy as jnp
import optax

import optimjax

model = hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP([32, 1])(x)))
# The mask has the params' structure: True where the weight decays (the weights "w"), False for the biases "b".
no_decay_on_biases = lambda params: hk.data_structures.map(lambda module, name, value: name != "b", params)
tx = optimjax.adamw(learning_rate=1e-2, weight_decay=1e-2, mask=no_decay_on_biases)


def loss_fn(params, x, y):
    return jnp.mean((model.apply(params, x) - y) ** 2)


@jax.jit
def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def main(steps=200):
    x = jax.random.normal(jax.random.key(0), (128, 4))
    y = jnp.sin(x @ jnp.array([[1.0], [-2.0], [0.5], [0.0]]))
    params = model.init(jax.random.key(1), x)
    opt_state = tx.init(params)
    for _ in range(steps):
        params, opt_state, loss = train_step(params, opt_state, x, y)
    print(f"Haiku, optimjax.adamw: loss {float(loss_fn(params, x, y)):.4f} after {steps} steps")
    return params


if __name__ == "__main__":
    main()
