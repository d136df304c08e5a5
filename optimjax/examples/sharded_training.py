"""Data- and model-parallel training of a Flax nnx MLP with an optimjax optimizer on a 2-D device mesh.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m optimjax.examples.sharded_training

(the flag fakes 8 CPU devices; on 8 GPUs or TPU cores leave it out). The devices form a 4 x 2 mesh with axes
"data" and "model":

- data parallelism: each batch is split along "data", so every row of the mesh sees a quarter of the examples;
- model parallelism (Megatron-style): the first layer's kernel is split by columns along "model", the second
  layer's kernel by rows, so the hidden activations never need to be gathered.

jit inserts the all-reduces the forward and backward passes need. The optimizer adds none: every optimjax
optimizer is elementwise, so each device updates its own shard of the parameters and of the optimizer state.
`nnx.Optimizer` gives its state the sharding annotations of the params; plain `tx.init(params)` under `jax.jit`
also returns state sharded like the params, without `out_shardings` (tests/test_sharding.py checks both).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optimjax


class MLP(nnx.Module):
    """in -> hidden (column-parallel over "model") -> relu -> out (row-parallel over "model")."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.hidden = nnx.Linear(d_in, d_hidden, kernel_init=nnx.with_partitioning(init, (None, "model")),
                                 bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("model",)), rngs=rngs)
        self.out = nnx.Linear(d_hidden, d_out, kernel_init=nnx.with_partitioning(init, ("model", None)), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.relu(self.hidden(x)))


def make_data(n: int, d_in: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """A smooth regression target, y = sin(x @ a) + 0.1 * |x| @ b, on Gaussian inputs."""
    kx, ka, kb = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (n, d_in))
    y = jnp.sin(x @ jax.random.normal(ka, (d_in, 1)) / jnp.sqrt(d_in)) + 0.1 * jnp.abs(x) @ jax.random.normal(
        kb, (d_in, 1)) / jnp.sqrt(d_in)
    return x, y


def describe(x: jax.Array) -> str:
    """The PartitionSpec of an array, or its sharding's type."""
    return str(x.sharding.spec) if isinstance(x.sharding, NamedSharding) else type(x.sharding).__name__


def main(argv: list[str] | None = None) -> list[float]:
    """Train, printing the placements and the loss; returns the losses."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256, help="global batch, split over the data axis")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--model-parallel", type=int, default=2, help="size of the model axis")
    args = parser.parse_args(argv)

    n_devices = jax.device_count()
    if n_devices % args.model_parallel:
        parser.error(f"--model-parallel={args.model_parallel} does not divide the {n_devices} devices")
    mesh = jax.make_mesh((n_devices // args.model_parallel, args.model_parallel), ("data", "model"),
                         axis_types=(AxisType.Auto, AxisType.Auto))
    print(f"mesh: data={mesh.shape['data']} x model={mesh.shape['model']} ({n_devices} {jax.devices()[0].platform} "
          "devices)")

    d_in = 16
    x, y = make_data(args.batch * 8, d_in)
    batch_sharding = NamedSharding(mesh, P("data", None))

    with jax.set_mesh(mesh):

        @nnx.jit
        def create() -> tuple[MLP, nnx.Optimizer]:
            # Built inside jit, so no unsharded copy is ever materialised on one device.
            model = MLP(d_in, args.hidden, 1, rngs=nnx.Rngs(0))
            optimizer = nnx.Optimizer(model, optimjax.adamw(learning_rate=3e-3, weight_decay=1e-4), wrt=nnx.Param)
            return model, optimizer

        @nnx.jit
        def train_step(model: MLP, optimizer: nnx.Optimizer, xb: jax.Array, yb: jax.Array) -> jax.Array:
            loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(xb) - yb) ** 2))(model)
            optimizer.update(model, grads)
            return loss

        model, optimizer = create()
        adam_state = optimizer.opt_state[0]  # adamw = chain(scale_by_adam, add_decayed_weights, lr)
        columns = "{:<16}  {:<10}  {:<18}  {:<18}  {}"  # at least two spaces between columns
        print(columns.format("parameter", "shape", "param sharding", "adam mu", "adam nu"))
        for (path, p), mu, nu in zip(nnx.to_flat_state(nnx.state(model, nnx.Param)),
                                     jax.tree.leaves(adam_state.mu), jax.tree.leaves(adam_state.nu)):
            name = ".".join(map(str, path))
            print(columns.format(name, str(p.shape), describe(p[...]), describe(mu), describe(nu)))

        losses = []
        for step in range(args.steps):
            lo = (step * args.batch) % x.shape[0]
            xb = jax.device_put(x[lo:lo + args.batch], batch_sharding)
            yb = jax.device_put(y[lo:lo + args.batch], batch_sharding)
            losses.append(float(train_step(model, optimizer, xb, yb)))
            if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
                print(f"step {step:5d}  loss {losses[-1]:.5f}", flush=True)
    return losses


if __name__ == "__main__":
    main()
