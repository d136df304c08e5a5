"""torch's `maximize=True`: ascend instead of descend, by negating the gradients first in the chain."""

from __future__ import annotations

import jax
import optax


def negate_gradients() -> optax.GradientTransformation:
    """g -> -g, stateless and exact in every dtype; put first in a chain it is torch's `maximize=True`."""
    return optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda updates, state, params=None: (jax.tree.map(lambda g: -g, updates), state),
    )


def maybe_maximize(maximize: bool) -> list[optax.GradientTransformation]:
    """The chain links that implement `maximize`: [negate_gradients()] or nothing."""
    if not isinstance(maximize, bool):
        raise ValueError(f"maximize must be a bool, got {maximize!r}")
    return [negate_gradients()] if maximize else []
