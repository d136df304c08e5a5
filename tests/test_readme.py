"""The README's Python example runs as written, and .ci/run calls exactly the README's test command."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_flax_example_runs_and_learns(capsys):
    code = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    # the target is a linear function of x: 100 NAdamW steps must fit it far below its variance (about 4)
    assert float(namespace["loss"]) < 0.1
    assert "loss after 100 steps" in capsys.readouterr().out


def test_readme_composition_example_decays_matrices_only():
    import jax.numpy as jnp

    code = re.findall(r"```python\n(.*?)```", README, re.S)[1]
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    tx = namespace["tx"]
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    zeros = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
    state = tx.init(params)
    for _ in range(2):  # the warmup starts at lr = 0
        updates, state = tx.update(zeros, state, params)
    assert float(jnp.abs(updates["b"]).max()) == 0.0  # masked: no decay on the bias, zero gradient
    assert float(updates["w"][0, 0]) < 0  # decayed towards zero


def test_readme_fused_example_takes_the_plain_optimizers_step():
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import optimjax

    code = re.findall(r"```python\n(.*?)```", README, re.S)[2]
    params = {"w": jnp.linspace(-1.0, 1.0, 1000, dtype=jnp.float32)}
    grads = {"w": jnp.cos(params["w"])}
    namespace = {"optimjax": optimjax, "params": params, "grads": grads}
    exec(compile(code, "README.md", "exec"), namespace)
    plain = optimjax.adamw(learning_rate=1e-3, weight_decay=1e-2)
    updates, _ = jax.jit(plain.update)(grads, plain.init(params), params)
    # AdamW's first step: lr * (sign(g) + wd * p), computed by the kernel and by XLA (a few ulp apart at most)
    np.testing.assert_allclose(namespace["params"]["w"], optax.apply_updates(params, updates)["w"], atol=1e-6)
    assert float(jnp.max(jnp.abs(namespace["params"]["w"] - params["w"]))) > 9e-4  # it moved by about lr
    assert int(namespace["state"][0].count) == 1


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_optimizer_table_uses_the_real_argument_names_and_defaults():
    """Each signature in the table's first column names only real arguments, with their real default values."""
    import inspect

    import jax.numpy as jnp

    import optimjax

    rows = [line for line in README.splitlines() if line.startswith("| `") and "torch" not in line.split("|")[1]]
    calls = [call for row in rows for call in re.findall(r"`(\w+)\(([^`]*)\)`", row.split("|")[1])]
    assert len(calls) >= 11, calls
    for name, arguments in calls:
        parameters = inspect.signature(getattr(optimjax, name)).parameters
        for argument in (a.strip() for a in re.split(r",(?![^()]*\))", arguments)):  # not inside a tuple
            if argument == "...":
                continue
            key, _, default = argument.partition("=")
            assert key in parameters, f"README: {name}({key}...) but {name} has no argument {key!r}"
            if default:
                assert parameters[key].default == eval(default, {"jnp": jnp}), f"README: {name}({argument}), default differs"
