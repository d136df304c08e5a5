"""`python -m optimjax.demo`: the command line, a tiny end-to-end run, and its numbers checked independently.

The metrics the demo reports are recomputed here from the trained weights with a numpy forward pass and
scikit-learn's `log_loss` / `accuracy_score`, so a bug in the demo's model or metric code cannot agree with itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from flax import nnx
from sklearn.metrics import accuracy_score, log_loss

from optimjax import demo


def numpy_logits(params, x):
    """The demo's MLP (ReLU between dense layers), written out in numpy from the trained weights."""
    layers = nnx.to_pure_dict(params)["layers"]
    h = np.asarray(x, np.float64)
    for i in sorted(layers):
        h = h @ np.asarray(layers[i]["kernel"], np.float64) + np.asarray(layers[i]["bias"], np.float64)
        if i != max(layers):
            h = np.maximum(h, 0.0)
    return h


def softmax(logits):
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--steps", "--optimizers", "--out", "--seed"):
        assert option in text
    for name in demo.OPTIMIZERS:
        assert name in text.replace("\n", "").replace(" ", "")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--optimizers", "adam,adamm"], "--optimizers: unknown ['adamm']"),
        (["--optimizers", ","], "--optimizers: unknown empty list"),
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--steps", "ten"], "--steps: invalid int value: 'ten'"),
    ],
)
def test_bad_arguments_are_rejected_naming_the_argument(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_every_optimizer_has_a_tuned_learning_rate_from_the_grid():
    assert list(demo.LEARNING_RATES) == list(demo.OPTIMIZERS)
    assert set(demo.LEARNING_RATES.values()) <= set(demo.LEARNING_RATE_GRID)
    assert set(demo.COLORS) == set(demo.LINESTYLES) == set(demo.OPTIMIZERS)


def test_minibatches_are_shuffled_epochs():
    batches = demo.minibatches(num_examples=10, steps=7, batch_size=3, seed=0)
    assert batches.shape == (7, 3)
    for epoch in range(0, 7, 3):  # 3 whole batches per epoch of 10 examples
        seen = batches[epoch:epoch + 3].ravel()
        assert len(set(seen.tolist())) == seen.size, "an example was drawn twice in one epoch"
        assert seen.min() >= 0 and seen.max() < 10
    assert not np.array_equal(batches[0:3], batches[3:6]), "epochs are not reshuffled"
    np.testing.assert_array_equal(batches, demo.minibatches(10, 7, 3, seed=0))
    with pytest.raises(ValueError, match="batch_size must be in"):
        demo.minibatches(10, 7, 11)


def test_train_rejects_an_unknown_optimizer():
    train, test = demo.load_digits_split()
    with pytest.raises(ValueError, match="train: name must be one of sgd, momentum"):
        demo.train("adamm", train, test, steps=1)


def test_reported_metrics_match_an_independent_computation(tmp_path):
    results = demo.main(["--steps", "60", "--optimizers", "sgd,adam", "--out", str(tmp_path / "c.png"), "--seed", "3"])
    assert list(results) == ["sgd", "adam"]
    train, test = demo.load_digits_split()
    for name, history in results.items():
        assert history.learning_rate == demo.LEARNING_RATES[name]
        # the curves are sampled about CURVE_POINTS times whatever the number of steps: every 60 // 25 = 2 steps
        np.testing.assert_array_equal(history.steps, np.arange(0, 61, 2))
        assert history.batch_loss.shape == (60,)
        # compilation and the compiled steps are timed apart, and both fit in the whole run's wall time
        assert history.compile_seconds > 0 and history.step_seconds > 0
        assert history.compile_seconds + 60 * history.step_seconds <= history.seconds
        probabilities = softmax(numpy_logits(history.params, test.x))
        labels = np.asarray(test.y)
        assert history.test_accuracy[-1] == pytest.approx(accuracy_score(labels, probabilities.argmax(1)), abs=1e-6)
        assert history.test_loss[-1] == pytest.approx(log_loss(labels, probabilities, labels=range(10)), rel=1e-4)
        train_probabilities = softmax(numpy_logits(history.params, train.x))
        assert history.train_loss[-1] == pytest.approx(
            log_loss(np.asarray(train.y), train_probabilities, labels=range(10)), rel=1e-4
        )
    # Same seed: both start from the same weights (cross-entropy of an untrained net near log 10) ...
    assert results["sgd"].train_loss[0] == results["adam"].train_loss[0]
    assert abs(results["sgd"].train_loss[0] - np.log(10)) < 0.3
    # ... and both learn: 60 steps at the tuned rates take the test accuracy far above chance (10%).
    for history in results.values():
        assert history.train_loss[-1] < 0.5 * history.train_loss[0]
        assert history.test_accuracy[-1] > 0.7


def test_command_line_end_to_end(tmp_path):
    """The README's command, in a tiny configuration: a table on stdout, progress on stderr, a PNG on disk."""
    out = tmp_path / "plots" / "curves.png"
    command = [sys.executable, "-m", "optimjax.demo", "--steps", "20", "--optimizers", "nesterov,nadamw",
               "--out", str(out), "--seed", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["optimizer", "lr", "train", "loss", "test", "loss", "test", "acc", "compile", "(s)",
                                "step", "(ms)"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:3]}
    assert list(rows) == ["nesterov", "nadamw"]
    for name, (lr, train_loss, test_loss, accuracy, compile_seconds, step_ms) in rows.items():
        assert float(lr) == demo.LEARNING_RATES[name]
        assert 0 < float(train_loss) < np.log(10) + 1 and 0 < float(test_loss)
        assert 0 <= float(accuracy.rstrip("%")) <= 100 and float(compile_seconds) > 0 and float(step_ms) > 0
    assert lines[3] == f"loss curves written to {out}"
    assert "[ 2/2] nadamw" in result.stderr and "step    20/20" in result.stderr  # progress
    image = matplotlib.image.imread(out)
    assert image.shape[0] >= 300 and image.shape[1] >= 600
    assert image.std() > 0.01


def test_install_hint_outside_a_checkout_names_the_pypi_extra(tmp_path):
    installed = tmp_path / "lib" / "python3.11" / "site-packages" / "optimjax"
    installed.mkdir(parents=True)
    assert demo.install_hint(installed) == 'pip install "optimjax[demo]"'
    checkout = Path(demo.__file__).resolve().parent.parent
    assert (checkout / "pyproject.toml").is_file()
    assert demo.install_hint(checkout / "optimjax") == f'cd {checkout} && pip install -e ".[demo]"'
    assert "-e" not in demo.__doc__.split("Needs the demo extra:")[1].split("\n")[0]
