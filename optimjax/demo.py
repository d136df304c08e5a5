"""`python -m optimjax.demo`: train a small Flax nnx MLP on scikit-learn's digits with every optimizer.

Each optimizer trains the same network from the same initialisation on the same mini-batches, with a learning rate
tuned for it (`LEARNING_RATES`), then the demo prints a table of final train loss, test loss, test accuracy,
compilation time and time per step, and writes a PNG of the loss curves. Progress goes to stderr, the table to
stdout.

The building blocks (`load_digits_split`, `init_mlp`, `minibatches`, `make_trainer`, `evaluate`) are also used by
`notebooks/flax_training.ipynb`, which shows how the learning rates were tuned.

Needs the demo extra: `pip install "optimjax[demo]"` (Flax for the model, scikit-learn for the data, matplotlib for
the plot).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optimjax


def install_hint(package_dir: Path = Path(__file__).resolve().parent) -> str:
    """How to install the demo's extra: from the checkout when `package_dir` is inside one, else from PyPI."""
    pyproject = package_dir.parent / "pyproject.toml"
    if pyproject.is_file() and 'name = "optimjax"' in pyproject.read_text(encoding="utf-8"):
        return f'cd {package_dir.parent} && pip install -e ".[demo]"'
    return 'pip install "optimjax[demo]"'


try:
    from flax import nnx
except ImportError as _error:  # pragma: no cover - depends on the environment
    raise ImportError(f"optimjax.demo needs Flax: {install_hint()}") from _error

#: Every optimizer of the demo, as a function of the learning rate (all other hyperparameters at torch's defaults:
#: momentum 0.9, betas (0.9, 0.999), AdamW / NAdamW weight decay 1e-2, ...).
OPTIMIZERS: dict[str, Callable[[Any], optax.GradientTransformation]] = {
    "sgd": optimjax.sgd,
    "momentum": optimjax.momentum,
    "nesterov": optimjax.nesterov,
    "adagrad": optimjax.adagrad,
    "adadelta": optimjax.adadelta,
    "rmsprop": optimjax.rmsprop,
    "adam": optimjax.adam,
    "amsgrad": optimjax.amsgrad,
    "adamw": optimjax.adamw,
    "nadam": optimjax.nadam,
    "nadamw": optimjax.nadamw,
}

#: Learning rates tuned on this task: for each optimizer, the value of `LEARNING_RATE_GRID` with the lowest
#: validation loss (validation = 20% of the training split), averaged over seeds 0 and 1 and over the second half of
#: `DEFAULT_STEPS` steps. The sweep that chose them is run and plotted in notebooks/flax_training.ipynb.
LEARNING_RATES: dict[str, float] = {
    "sgd": 0.3,
    "momentum": 0.03,
    "nesterov": 0.03,
    "adagrad": 0.03,
    "adadelta": 3.0,
    "rmsprop": 0.003,
    "adam": 0.003,
    "amsgrad": 0.003,
    "adamw": 0.01,
    "nadam": 0.01,
    "nadamw": 0.01,
}

#: The grid the learning rates were chosen from: 1e-4 to 10 in steps of about half a decade.
LEARNING_RATE_GRID: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)

#: One colour per optimizer, by family (SGD: blues, per-parameter rates: greens, Adam family: warm colours), and
#: alternating line styles, shared by the demo's plot and the notebooks.
COLORS: dict[str, str] = {
    "sgd": "#1f77b4", "momentum": "#4a9be0", "nesterov": "#17becf",
    "adagrad": "#2ca02c", "adadelta": "#98df8a", "rmsprop": "#bcbd22",
    "adam": "#d62728", "amsgrad": "#ff7f0e", "adamw": "#9467bd", "nadam": "#8c564b", "nadamw": "#e377c2",
}
LINESTYLES: dict[str, str] = {name: "-" if i % 2 == 0 else "--" for i, name in enumerate(OPTIMIZERS)}

DEFAULT_STEPS = 500
#: How many times `train` measures the full-data metrics by default, whatever the number of steps (plus step 0).
CURVE_POINTS = 25
BATCH_SIZE = 64
HIDDEN = 64


class Split(NamedTuple):
    """A data split: float32 features in [0, 1], shape (n, 64), and int32 labels 0-9, shape (n,)."""

    x: jax.Array
    y: jax.Array


def load_digits_split(seed: int = 0, test_fraction: float = 0.25) -> tuple[Split, Split]:
    """scikit-learn's 8x8 digits (1797 images, shipped inside the package), split into train and test.

    The split is stratified by class and fixed by `seed`; pixel values 0-16 are scaled to [0, 1].
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SystemExit(f"optimjax.demo needs scikit-learn: {install_hint()}") from err
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"load_digits_split: test_fraction must be in (0, 1), got {test_fraction!r}")
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x / 16.0, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    as_split = lambda a, b: Split(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.int32))
    return as_split(x_train, y_train), as_split(x_test, y_test)


class MLP(nnx.Module):
    """64 -> hidden -> hidden -> 10 perceptron with ReLU activations."""

    def __init__(self, hidden: int, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(64, hidden, rngs=rngs), nnx.Linear(hidden, hidden, rngs=rngs),
                                nnx.Linear(hidden, 10, rngs=rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = nnx.relu(layer(x))
        return self.layers[-1](x)


def init_mlp(seed: int = 0, hidden: int = HIDDEN) -> tuple[nnx.GraphDef, nnx.State]:
    """A freshly initialised `MLP`, split into its static graph and its parameters (a pytree for optax)."""
    return nnx.split(MLP(hidden, nnx.Rngs(seed)))


def evaluate(graphdef: nnx.GraphDef, params: nnx.State, data: Split) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy and accuracy of the model `(graphdef, params)` on `data`."""
    logits = nnx.merge(graphdef, params)(data.x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, data.y).mean()
    return loss, jnp.mean(jnp.argmax(logits, axis=-1) == data.y)


class Trainer(NamedTuple):
    """Pure functions for training with one optimizer; both are jit- and vmap-able (e.g. over learning rates).

    `hyperparameter` is the argument of the trainer's `make_optimizer`, usually the learning rate; `jax.vmap` over
    it trains one model per value in a single compiled computation.

    Attributes:
      init: `init(params, hyperparameter) -> opt_state`.
      run: `run(params, opt_state, hyperparameter, batches) -> (params, opt_state, losses)`: one optimizer step per
        row of `batches` (int array of shape (steps, batch_size), indices into the training set, see `minibatches`),
        under `jax.lax.scan`; `losses` are the mini-batch losses before each step.
    """

    init: Callable[..., Any]
    run: Callable[..., Any]


def minibatches(num_examples: int, steps: int, batch_size: int = BATCH_SIZE, seed: int = 0) -> np.ndarray:
    """Indices of `steps` mini-batches, shape (steps, batch_size): shuffled epochs, each cut into whole batches."""
    if not 0 < batch_size <= num_examples:
        raise ValueError(f"minibatches: batch_size must be in [1, {num_examples}], got {batch_size!r}")
    if steps < 1:
        raise ValueError(f"minibatches: steps must be >= 1, got {steps!r}")
    rng = np.random.default_rng(seed)
    per_epoch = num_examples // batch_size
    epochs = -(-steps // per_epoch)
    order = np.concatenate([rng.permutation(num_examples)[: per_epoch * batch_size] for _ in range(epochs)])
    return order.reshape(-1, batch_size)[:steps].astype(np.int32)


def make_trainer(
    make_optimizer: Callable[[Any], optax.GradientTransformation], graphdef: nnx.GraphDef, train: Split
) -> Trainer:
    """The `Trainer` for the model `graphdef` on `train`, with the optimizer `make_optimizer(hyperparameter)`.

    `make_optimizer` is e.g. `OPTIMIZERS["adam"]` (a function of the learning rate) or
    `lambda wd: optimjax.adamw(1e-3, weight_decay=wd)` (a function of the weight decay).
    """

    def init(params, hyperparameter):
        return make_optimizer(hyperparameter).init(params)

    def run(params, opt_state, hyperparameter, batches):
        tx = make_optimizer(hyperparameter)

        def batch_loss(params, batch):
            return evaluate(graphdef, params, Split(train.x[batch], train.y[batch]))[0]

        def step(carry, batch):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(batch_loss)(params, batch)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), batches)
        return params, opt_state, losses

    return Trainer(init, run)


class History(NamedTuple):
    """What `train` records.

    Attributes:
      steps: the step counts at which the metrics below were measured (0, eval_every, ..., steps).
      train_loss, test_loss, test_accuracy: full-data metrics at those steps, numpy arrays.
      batch_loss: the mini-batch loss of every step, numpy array of length `steps`.
      seconds: wall time of the whole run, compilation and evaluation included.
      learning_rate: the learning rate used.
      params: the trained parameters.
      compile_seconds: time spent compiling the training loop (once per distinct chunk length, at most twice).
      step_seconds: time per training step, compiled: the chunks' run time (waited for) divided by `steps`.
    """

    steps: np.ndarray
    train_loss: np.ndarray
    test_loss: np.ndarray
    test_accuracy: np.ndarray
    batch_loss: np.ndarray
    seconds: float
    learning_rate: float
    params: Any
    compile_seconds: float
    step_seconds: float


def train(
    name: str,
    train_data: Split,
    test_data: Split,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    learning_rate: float | None = None,
    eval_every: int | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> History:
    """Train a fresh `MLP` (initialised from `seed`) with optimizer `name` for `steps` mini-batch steps.

    The learning rate defaults to `LEARNING_RATES[name]`. Every `eval_every` steps (default: `steps //
    CURVE_POINTS`, at least 1) and after the last one, the loss on the full train and test sets is measured and
    `progress(step, train_loss)` is called. Models with the same `seed` start from the same weights and see the
    same mini-batches, whatever the optimizer.
    """
    if steps < 1:
        raise ValueError(f"train: steps must be >= 1, got {steps!r}")
    if eval_every is None:
        eval_every = max(1, steps // CURVE_POINTS)
    if eval_every < 1:
        raise ValueError(f"train: eval_every must be >= 1, got {eval_every!r}")
    if name not in OPTIMIZERS:
        raise ValueError(f"train: name must be one of {', '.join(OPTIMIZERS)}; got {name!r}")
    start = time.perf_counter()
    graphdef, params = init_mlp(seed)
    trainer = make_trainer(OPTIMIZERS[name], graphdef, train_data)
    learning_rate = LEARNING_RATES[name] if learning_rate is None else learning_rate
    run = jax.jit(trainer.run)
    compiled, compile_seconds, run_seconds = {}, 0.0, 0.0
    measure = jax.jit(lambda p: (evaluate(graphdef, p, train_data), evaluate(graphdef, p, test_data)))
    opt_state = trainer.init(params, learning_rate)
    batches = minibatches(train_data.x.shape[0], steps, BATCH_SIZE, seed)
    records, batch_losses = [], []
    done = 0
    while True:
        (train_loss, _), (test_loss, test_accuracy) = measure(params)
        records.append((done, float(train_loss), float(test_loss), float(test_accuracy)))
        if progress is not None:
            progress(done, float(train_loss))
        if done == steps:
            break
        chunk = min(eval_every, steps - done)  # one compilation per distinct chunk length: at most two
        arguments = (params, opt_state, learning_rate, batches[done:done + chunk])
        if chunk not in compiled:
            tick = time.perf_counter()
            compiled[chunk] = run.lower(*arguments).compile()
            compile_seconds += time.perf_counter() - tick
        tick = time.perf_counter()
        params, opt_state, losses = jax.block_until_ready(compiled[chunk](*arguments))
        run_seconds += time.perf_counter() - tick
        batch_losses.append(np.asarray(losses))
        done += chunk
    step, train_loss, test_loss, test_accuracy = (np.array(column) for column in zip(*records))
    return History(step, train_loss, test_loss, test_accuracy, np.concatenate(batch_losses),
                   time.perf_counter() - start, learning_rate, params, compile_seconds, run_seconds / steps)


def format_table(results: dict[str, History]) -> str:
    """One row per optimizer: learning rate, final losses, test accuracy, compilation time and time per step."""
    lines = [f"{'optimizer':<10} {'lr':>7} {'train loss':>10} {'test loss':>9} {'test acc':>8} {'compile (s)':>11} "
             f"{'step (ms)':>9}"]
    for name, h in results.items():
        lines.append(f"{name:<10} {h.learning_rate:>7.0e} {h.train_loss[-1]:>10.4f} {h.test_loss[-1]:>9.4f} "
                     f"{h.test_accuracy[-1]:>8.2%} {h.compile_seconds:>11.2f} {1e3 * h.step_seconds:>9.3f}")
    return "\n".join(lines)


def plot(results: dict[str, History], path: str) -> None:
    """Save train loss (log scale) and test accuracy against step, one line per optimizer, as a PNG at `path`."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend or figure state is touched
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SystemExit(f"optimjax.demo needs matplotlib: {install_hint()}") from err
    fig = Figure(figsize=(13, 5), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for name, h in results.items():
        style = dict(color=COLORS[name], ls=LINESTYLES[name], lw=1.8, label=f"{name} (lr={h.learning_rate:g})")
        ax_loss.plot(h.steps, h.train_loss, **style)
        ax_acc.plot(h.steps, 100 * h.test_accuracy, **style)
    ax_loss.set(yscale="log", xlabel="step", ylabel="train cross-entropy (full train set, log scale)",
                title="Training loss")
    well_trained = min(h.test_accuracy[-1] for h in results.values()) > 0.85  # else show the whole range
    ax_acc.set(xlabel="step", ylabel="test accuracy (%)", title="Test accuracy", ylim=(80 if well_trained else 0, 100))
    for ax in (ax_loss, ax_acc):
        ax.grid(True, which="both", alpha=0.3)
    ax_acc.legend(loc="lower right", fontsize=9, ncols=2)
    fig.suptitle("MLP on scikit-learn digits, same init and mini-batches for every optimizer")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m optimjax.demo",
        description="Train a small Flax nnx MLP (64-64-64-10) on scikit-learn's 8x8 digits with each optimizer "
        "at its tuned learning rate, print a table of final train loss, test loss, test accuracy, compilation "
        "time and time per step, and write a PNG of the loss and accuracy curves.",
    )
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"mini-batch steps (batch {BATCH_SIZE}) per optimizer (default: %(default)s)")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                        help="comma-separated optimizers to run, from: %(default)s (default: all)")
    parser.add_argument("--out", default="optimjax-demo.png",
                        help="where to write the loss-curve PNG (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weights' initialisation and the mini-batch order (default: %(default)s)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown or not names:
        parser.error(f"--optimizers: unknown {unknown or 'empty list'}; choose from {','.join(OPTIMIZERS)}")
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    args.optimizers = names
    try:  # fail now rather than after training: the PNG is written last
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        existed = os.path.exists(args.out)
        with open(args.out, "ab"):
            pass
        if not existed:
            os.remove(args.out)
    except OSError as err:
        parser.error(f"--out {args.out}: cannot write the PNG there ({err.strerror or err})")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, History]:
    """Run the demo with command-line arguments `argv` (see `--help`) and return each optimizer's `History`."""
    args = _parse_args(argv)
    train_data, test_data = load_digits_split(seed=0)
    print(f"digits: {train_data.x.shape[0]} train / {test_data.x.shape[0]} test images; {args.steps} steps of "
          f"batch {BATCH_SIZE} per optimizer; jax {jax.__version__} on {jax.default_backend()}", file=sys.stderr)
    results = {}
    interactive = sys.stderr.isatty()
    for i, name in enumerate(args.optimizers, 1):
        label = f"[{i:>2}/{len(args.optimizers)}] {name:<9}"

        def report(step, loss, label=label):
            line = f"{label} step {step:>5}/{args.steps}  train loss {loss:.4f}"
            if interactive:
                print("\r" + line, end="", file=sys.stderr, flush=True)
            elif step == args.steps:
                print(line, file=sys.stderr, flush=True)

        results[name] = train(name, train_data, test_data, args.steps, args.seed, progress=report)
        if interactive:
            print(f"  ({results[name].seconds:.1f} s)", file=sys.stderr)
    print(format_table(results))
    plot(results, args.out)
    print(f"loss curves written to {args.out}")
    return results


if __name__ == "__main__":
    main()
