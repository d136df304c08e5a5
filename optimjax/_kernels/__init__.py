"""What an optimizer family tells `optimjax.fused` about its one-pass kernel (`fused_step.cc`).

A family file describes each alias with a function of the alias's arguments returning a `Kernel` (its kernel
family, its state's arrays and per-step coefficients, the learning rate and weight decay it was built with), or a
string saying why the kernel cannot run it (an option the kernel lacks; "" for a step XLA already makes in one
pass). `@fused_kernel(describe)` on the alias records that description against the transformation it returns;
`optimjax.fused.of(tx)` reads it back. Nothing else in the family changes: the alias returns its usual
`optax.GradientTransformation`, and the description is only evaluated when `fused.of` asks for it.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from typing import Any, Callable, NamedTuple

# The kernel's families: fused_step.cc, enum Family.
ADAM, NADAM, MOMENTUM, RMS, ADAGRAD, RADAM, ADAMAX, RPROP, ASGD = range(9)
# Per-step coefficients of a family, at most this many (fused_step.cc, kNumCoefs minus the shared ones).
FAMILY_COEFFICIENTS = 8


class Kernel(NamedTuple):
    """How the kernel runs one optimizer: `chain([negation,] decay, direction, lr)` with the decay coupled (added
    to g), or `chain([negation,] direction, decay, lr)` with it decoupled (added to the direction). A direction
    that holds its own learning rate (Rprop, ASGD) ends the chain, `chain([negation,] [decay,] direction)`: its
    `learning_rate` is None and the kernel adds the update it computes to p as it is.

    Attributes:
      name: the alias, for messages.
      family: the kernel's family (ADAM, NADAM, MOMENTUM, RMS, ADAGRAD, RADAM, ADAMAX, RPROP, ASGD).
      state: the class of the direction transform's state in the chain.
      arrays: that state's per-parameter fields, in the kernel's order.
      coefficients: the direction state -> (the family's per-step coefficients, at most FAMILY_COEFFICIENTS, in
        fused_step.cc's order; the new values of the state's other fields, e.g. the count).
      learning_rate: the float or schedule the chain's `scale_by_learning_rate` was built with; None when the
        chain has none (the direction's coefficients hold the learning rate).
      weight_decay: the float or schedule of its `add_decayed_weights`.
      coupled: L2 decay added to g (True), or decoupled, added to the direction (False).
      flags: the family's two flags (Adam family, RAdam, Adamax: torch.lerp's second form; momentum: Nesterov,
        dampening).
      maximize: negate g first (torch's `maximize`; the chain starts with a stateless negation).
    """

    name: str
    family: int
    state: type
    arrays: tuple[str, ...]
    coefficients: Callable[[Any], tuple[list[Any], dict[str, Any]]]
    learning_rate: Any
    weight_decay: Any = 0.0
    coupled: bool = True
    flags: tuple[bool, bool] = (False, False)
    maximize: bool = False


# The description of every transformation returned by a described alias, keyed on its update function (alive as
# long as the transformation is), evaluated on demand.
_DESCRIPTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fused_kernel(describe: Callable[..., Kernel | str]) -> Callable[[Callable], Callable]:
    """Decorate an alias: `describe(**its arguments, defaults included)` is the kernel of what it returns."""

    def decorate(alias: Callable) -> Callable:
        signature = inspect.signature(alias)

        @functools.wraps(alias)
        def described(*args, **kwargs):
            transformation = alias(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            _DESCRIPTIONS[transformation.update] = functools.partial(describe, **bound.arguments)
            return transformation

        return described

    return decorate


def kernel_of(transformation: Any) -> Kernel | str | None:
    """The kernel of `transformation`, or why it has none ("" for a step XLA already makes in one pass), or None
    when it was not returned by a described alias (optax's own, a wrapped or chained one)."""
    try:
        describe = _DESCRIPTIONS.get(transformation.update)
    except (AttributeError, TypeError):  # no update function, or one that cannot be referenced weakly
        return None
    return None if describe is None else describe()
