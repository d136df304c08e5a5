"""Equinox: an `eqx.nn.MLP`, gradient clipping chained before Adam. `python -m optimjax.examples.equinox_training`"""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import optimjax

tx = optax.chain(optax.clip_by_global_norm(1.0), optimjax.adam(learning_rate=1e-2))


def loss_fn(model, x, y):
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


@eqx.filter_jit
def train_step(model, opt_state, x, y):
    loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
    # eqx.filter keeps the model's arrays (what the optimizer trains) and puts None for the rest (activations)
    updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, loss


def main(steps=200):
    x = jax.random.normal(jax.random.key(0), (128, 4))
    y = jnp.sin(x @ jnp.array([[1.0], [-2.0], [0.5], [0.0]]))
    model = eqx.nn.MLP(in_size=4, out_size=1, width_size=32, depth=1, key=jax.random.key(1))
    opt_state = tx.init(eqx.filter(model, eqx.is_array))
    for _ in range(steps):
        model, opt_state, loss = train_step(model, opt_state, x, y)
    print(f"Equinox, clip_by_global_norm + optimjax.adam: loss {float(loss_fn(model, x, y)):.4f} after {steps} steps")
    return model


if __name__ == "__main__":
    main()
