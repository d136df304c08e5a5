"""NAdam's own behaviour: Dozat's momentum schedule, and momentum_decay = 0 as the constant-momentum form."""

import jax.numpy as jnp
import numpy as np

import optimjax as oj


def test_momentum_schedule_closed_form():
    t = np.arange(1, 2001, dtype=np.float64)
    for psi in (0.0, 4e-3, 0.1):
        expected = 0.9 * (1 - 0.5 * 0.96 ** (t * psi))
        got = np.asarray(oj.momentum_schedule(0.9, psi, jnp.asarray(t, jnp.float32)))
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    # rises from b1 / 2 towards b1, monotonically
    mu = np.asarray(oj.momentum_schedule(0.9, 4e-3, jnp.arange(1.0, 100001.0)))
    assert 0.45 < mu[0] < 0.451 and mu[-1] > 0.8999 and np.all(np.diff(mu) >= 0)


def test_momentum_decay_zero_is_constant_momentum_nadam():
    """With momentum_decay = 0 every mu_t is b1 / 2: Dozat's NAdam with a constant look-ahead momentum
    mu = b1 / 2, written out here in numpy (float64) from the paper's constant-momentum form."""
    b1, b2, eps, lr = 0.9, 0.99, 1e-8, 1e-2
    mu = b1 / 2
    rng = np.random.default_rng(0)
    theta = rng.normal(size=5)
    tx = oj.nadam(lr, b1=b1, b2=b2, eps=eps, momentum_decay=0.0)
    params = {"x": jnp.asarray(theta, jnp.float32)}
    state = tx.init(params)
    m = v = np.zeros(5)
    for t in range(1, 21):
        g = rng.normal(size=5)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = np.sqrt(v / (1 - b2**t)) + eps
        theta = theta - lr * ((1 - mu) / (1 - mu**t) * g / denom + mu / (1 - mu ** (t + 1)) * m / denom)
        updates, state = tx.update({"x": jnp.asarray(g, jnp.float32)}, state, params)
        params = {"x": params["x"] + updates["x"]}
    np.testing.assert_allclose(np.asarray(params["x"]), theta, rtol=1e-5, atol=1e-6)
    inner = state[1]
    np.testing.assert_allclose(float(inner.mu_product), mu**20, rtol=1e-5)
