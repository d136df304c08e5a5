"""Torch interop: a `torch.optim` optimizer's `state_dict()` in and out of optimjax state, and the optimjax
transformation of a live torch optimizer.

    state = port.load_state_dict(tx, params, torch_optimizer.state_dict(), paths)
    torch_optimizer.load_state_dict(port.state_dict(tx, state, params, paths, torch_optimizer))
    tx = port.from_torch(torch_optimizer, paths)

`paths` lists, for each torch parameter index (the order of `param_groups`, group after group), the JAX leaf it
is: a top-level dict key (`"w"`, `"fc.weight"`), a key path (`("encoder", "layers", 0, "kernel")`), or a
`Leaf(path, to_jax, to_torch)` that also converts the layout (`transposed("kernel")` for a Linear weight kept as
a Dense kernel); the conversion is applied to every per-element state tensor of that parameter alike.

torch keeps state per parameter, keyed by that index (`{'state': {i: {'step', 'exp_avg', ...}}, 'param_groups':
[...]}`), creates it at the parameter's first step (Adagrad at construction) and counts steps per parameter; optax
keeps one state per transformation, shaped like the params, with one step count. The conversion goes through a
table keyed on the state NamedTuple types (`STATE_MAPS`: which field is which torch key) and one keyed on the torch
classes (`TORCH_OPTIMIZERS`: which keys torch keeps, recognised from the hyperparameters in `param_groups`). A new
optimizer family adds one entry to each.

torch is imported when a function here is called, never by `import optimjax`.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimjax.adadelta import ScaleByAdadeltaState, adadelta
from optimjax.adafactor import ScaleByAdafactorState, adafactor, is_factored
from optimjax.adagrad import ScaleByAdagradState, adagrad
from optimjax import schedules
from optimjax.adam import ScaleByAdamState, adam, adamw
from optimjax.adamax import ScaleByAdamaxState, adamax
from optimjax.asgd import ScaleByAsgdState, asgd
from optimjax.clipping import ClipGradNormState
from optimjax.learning_rate import ScaleByLearningRateState
from optimjax.muon import ScaleByMuonState, muon
from optimjax.nadam import ScaleByNadamState, nadam, nadamw
from optimjax.radam import ScaleByRadamState, radam
from optimjax.rmsprop import ScaleByRmsState, rmsprop
from optimjax.rprop import ScaleByRpropState, rprop
from optimjax.sgd import MomentumState, sgd
from optimjax.weight_decay import AddDecayedWeightsState


# --- the tables ------------------------------------------------------------------------------------------------


class StateMap(NamedTuple):
    """How one optimjax state NamedTuple maps onto torch's per-parameter state.

    Attributes:
      torch: the torch.optim classes (names in `TORCH_OPTIMIZERS`) whose state this is; () for a state that only
        counts steps and goes with any optimizer (a schedule's count).
      arrays: state field -> torch key, for fields shaped like the params (None when the option is off).
      scalars: state field -> torch key, for a scalar torch keeps once per parameter (NAdam's mu_product, ASGD's
        eta and mu).
      count: the field holding the int32 step count (torch's `step`), or None.
      present: (field, the JAX leaf's shape) -> whether torch keeps that field's key for that parameter; None: it
        always does. For a state whose leaf in some field is a placeholder (Adafactor: a matrix has row_var and
        col_var, a vector variance; the unused fields hold 0-d zeros that torch has no key for).
    """

    torch: tuple[str, ...]
    arrays: dict[str, str]
    scalars: dict[str, str] = {}
    count: str | None = "count"
    present: Callable[[str, tuple], bool] | None = None

    def has(self, field: str, shape: tuple) -> bool:
        return self.present is None or self.present(field, shape)


def _adafactor_present(field: str, shape: tuple) -> bool:
    return (field == "variance") != is_factored(np.zeros(shape, np.bool_))


STATE_MAPS: dict[type, StateMap] = {
    ScaleByAdamState: StateMap(("Adam",), {"mu": "exp_avg", "nu": "exp_avg_sq", "nu_max": "max_exp_avg_sq"}),
    ScaleByNadamState: StateMap(("NAdam",), {"mu": "exp_avg", "nu": "exp_avg_sq"}, {"mu_product": "mu_product"}),
    MomentumState: StateMap(("SGD", "RMSprop"), {"velocity": "momentum_buffer"}),
    ScaleByRmsState: StateMap(("RMSprop",), {"nu": "square_avg", "mu_grad": "grad_avg"}, count=None),
    ScaleByAdagradState: StateMap(("Adagrad",), {"sum_of_squares": "sum"}, count=None),
    ScaleByAdadeltaState: StateMap(("Adadelta",), {"grad_sq_avg": "square_avg", "delta_sq_avg": "acc_delta"},
                                   count=None),
    ScaleByLearningRateState: StateMap((), {}),
    AddDecayedWeightsState: StateMap((), {}),
    optax.ScaleByScheduleState: StateMap((), {}),
    ClipGradNormState: StateMap((), {}, count=None),  # the last total norm, for logging: not torch state, kept
    ScaleByRadamState: StateMap(("RAdam",), {"mu": "exp_avg", "nu": "exp_avg_sq"}),
    ScaleByAdamaxState: StateMap(("Adamax",), {"mu": "exp_avg", "nu": "exp_inf"}),
    ScaleByAsgdState: StateMap(("ASGD",), {"ax": "ax"}, {"eta": "eta", "mu": "mu"}),
    ScaleByRpropState: StateMap(("Rprop",), {"prev": "prev", "step_size": "step_size"}),
    ScaleByAdafactorState: StateMap(("Adafactor",), {"row_var": "row_var", "col_var": "col_var",
                                                     "variance": "variance"}, present=_adafactor_present),
    ScaleByMuonState: StateMap(("Muon",), {"momentum_buffer": "momentum_buffer"}, count=None),
}


class TorchOptimizer(NamedTuple):
    """A torch.optim class as its state_dict shows it.

    Attributes:
      signature: hyperparameter names in every param group of this class (and of no class listed before it).
      keys: (group, shape) -> the state keys torch keeps for a parameter of that shape (the JAX leaf's) in that
        group (the group's flags decide some; Adafactor's the parameter's number of dims).
      build: (group, learning_rate) -> the optimjax transformation with the group's hyperparameters and that
        learning rate (a number or a schedule), for `from_torch`.
      eager: state is created at construction (Adagrad), not at the parameter's first step.
    """

    signature: frozenset[str]
    keys: Callable[[dict, tuple], set[str]]
    build: Callable[[dict, Any], optax.GradientTransformation]
    eager: bool = False


def _adam_keys(group, shape):
    return {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if group.get("amsgrad") else set())


def _rmsprop_keys(group, shape):
    return ({"step", "square_avg"} | ({"momentum_buffer"} if group.get("momentum", 0) != 0 else set())
            | ({"grad_avg"} if group.get("centered") else set()))


def _f(value: Any) -> Any:
    """A torch hyperparameter (a number, a 0-d tensor, a tuple of them; None) as Python numbers; a JAX array (a
    hyperparameter injected by `optax.inject_hyperparams`) as it is."""
    if isinstance(value, (tuple, list)):
        return tuple(_f(v) for v in value)
    return value if value is None or isinstance(value, (bool, jax.Array)) else float(value)


def _build_sgd(g, lr):
    momentum = _f(g["momentum"])
    return sgd(lr, momentum=momentum if isinstance(momentum, jax.Array) else momentum or None, nesterov=g["nesterov"],
               dampening=_f(g["dampening"]), weight_decay=_f(g["weight_decay"]), maximize=g["maximize"])


def _build_adam(g, lr):
    (b1, b2), kwargs = _f(g["betas"]), dict(eps=_f(g["eps"]), amsgrad=g["amsgrad"], maximize=g["maximize"])
    if g.get("decoupled_weight_decay"):
        return adamw(lr, b1, b2, weight_decay=_f(g["weight_decay"]), **kwargs)
    return adam(lr, b1, b2, weight_decay=_f(g["weight_decay"]), **kwargs)


def _build_nadam(g, lr):
    (b1, b2), wd = _f(g["betas"]), _f(g["weight_decay"])
    kwargs = dict(eps=_f(g["eps"]), momentum_decay=_f(g["momentum_decay"]), weight_decay=wd, maximize=g["maximize"])
    return (nadamw if g.get("decoupled_weight_decay") else nadam)(lr, b1, b2, **kwargs)


def _adafactor_keys(group, shape):
    return {"step"} | ({"row_var", "col_var"} if len(shape) >= 2 else {"variance"})


def _build_muon(g, lr):
    return muon(lr, _f(g["weight_decay"]), _f(g["momentum"]), g["nesterov"], _f(g["ns_coefficients"]), _f(g["eps"]),
                int(g["ns_steps"]), g["adjust_lr_fn"])


# Recognised by the first entry whose signature the group's keys include: NAdam and RAdam also have
# decoupled_weight_decay, NAdam and Adam betas, so RAdam comes after both and Adamax (betas and weight_decay, which
# every Adam-like class has; SparseAdam has no weight_decay) after every other class with betas.
TORCH_OPTIMIZERS: dict[str, TorchOptimizer] = {
    "SGD": TorchOptimizer(frozenset({"momentum", "dampening", "nesterov"}),
                          lambda group, shape: {"momentum_buffer"} if group.get("momentum", 0) != 0 else set(), _build_sgd),
    "NAdam": TorchOptimizer(frozenset({"betas", "momentum_decay"}),
                            lambda group, shape: {"step", "mu_product", "exp_avg", "exp_avg_sq"}, _build_nadam),
    "Adam": TorchOptimizer(frozenset({"betas", "amsgrad"}), _adam_keys, _build_adam),  # and AdamW
    "RMSprop": TorchOptimizer(
        frozenset({"alpha", "centered", "momentum"}), _rmsprop_keys,
        lambda g, lr: rmsprop(lr, _f(g["alpha"]), _f(g["eps"]), g["centered"], _f(g["momentum"]) or None,
                              _f(g["weight_decay"]), maximize=g["maximize"])),
    "Adagrad": TorchOptimizer(
        frozenset({"lr_decay", "initial_accumulator_value"}), lambda group, shape: {"step", "sum"},
        lambda g, lr: adagrad(lr, _f(g["lr_decay"]), _f(g["weight_decay"]), _f(g["initial_accumulator_value"]),
                              _f(g["eps"]), maximize=g["maximize"]),
        eager=True),
    "Adadelta": TorchOptimizer(
        frozenset({"rho"}), lambda group, shape: {"step", "square_avg", "acc_delta"},
        lambda g, lr: adadelta(lr, _f(g["rho"]), _f(g["eps"]), _f(g["weight_decay"]), maximize=g["maximize"])),
    "RAdam": TorchOptimizer(
        frozenset({"betas", "decoupled_weight_decay"}), lambda group, shape: {"step", "exp_avg", "exp_avg_sq"},
        lambda g, lr: radam(lr, *_f(g["betas"]), _f(g["eps"]), _f(g["weight_decay"]), g["decoupled_weight_decay"],
                            g["maximize"])),
    "Adamax": TorchOptimizer(
        frozenset({"betas", "weight_decay"}), lambda group, shape: {"step", "exp_avg", "exp_inf"},
        lambda g, lr: adamax(lr, *_f(g["betas"]), _f(g["eps"]), _f(g["weight_decay"]), g["maximize"])),
    "ASGD": TorchOptimizer(
        frozenset({"lambd", "alpha", "t0"}), lambda group, shape: {"step", "eta", "mu", "ax"},
        lambda g, lr: asgd(lr, _f(g["lambd"]), _f(g["alpha"]), _f(g["t0"]), _f(g["weight_decay"]), g["maximize"])),
    "Rprop": TorchOptimizer(
        frozenset({"etas", "step_sizes"}), lambda group, shape: {"step", "prev", "step_size"},
        lambda g, lr: rprop(lr, _f(g["etas"]), _f(g["step_sizes"]), g["maximize"])),
    "Adafactor": TorchOptimizer(
        frozenset({"beta2_decay", "d"}), _adafactor_keys,
        lambda g, lr: adafactor(lr, _f(g["beta2_decay"]), _f(g["eps"]), _f(g["d"]), _f(g["weight_decay"]),
                                g["maximize"])),
    "Muon": TorchOptimizer(frozenset({"ns_coefficients", "ns_steps"}), lambda group, shape: {"momentum_buffer"},
                           _build_muon),
}


# --- leaves and their layout ------------------------------------------------------------------------------------


class Leaf(NamedTuple):
    """The JAX leaf of one torch parameter, and how to convert a per-element tensor between the two layouts.

    Attributes:
      path: a top-level dict key, or a key path (a tuple of dict keys, sequence indices, attribute names).
      to_jax: numpy array in torch's layout -> the same in the JAX leaf's layout (None: the same layout).
      to_torch: the inverse (None: the same layout). `state_dict` needs it whenever `to_jax` is given.
    """

    path: Any
    to_jax: Callable[[np.ndarray], np.ndarray] | None = None
    to_torch: Callable[[np.ndarray], np.ndarray] | None = None


def transposed(path: Any, axes: tuple[int, ...] | None = None) -> Leaf:
    """The leaf at `path`, stored as torch's tensor transposed by `axes` (`np.transpose`'s argument; None reverses
    the axes: a `torch.nn.Linear` weight (out, in) kept as a Dense kernel (in, out)). Conv weights (O, I, H, W)
    kept as HWIO are `transposed(path, (2, 3, 1, 0))`."""
    inverse = None if axes is None else tuple(int(i) for i in np.argsort(axes))
    return Leaf(path, lambda a: np.transpose(a, axes), lambda a: np.transpose(a, inverse))


def _key_of(entry: Any) -> Any:
    for name in ("key", "idx", "name"):  # DictKey / FlattenedIndexKey, SequenceKey, GetAttrKey
        if hasattr(entry, name):
            return getattr(entry, name)
    return entry


def _plain(path: tuple) -> tuple:
    return tuple(_key_of(k) for k in path)


def _as_leaf(entry: Any) -> Leaf:
    if not isinstance(entry, Leaf):
        entry = Leaf(entry)
    path = entry.path if isinstance(entry.path, (tuple, list)) else (entry.path,)
    return entry._replace(path=tuple(path))


def _show(path: tuple) -> str:
    return repr(path[0]) if len(path) == 1 else repr(path)


class _Params:
    """The torch index <-> JAX leaf correspondence given by `paths`, checked against `params`."""

    def __init__(self, where: str, params: Any, paths: Any, names: list | None = None):
        leaves = {_plain(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
        self.leaves = [_as_leaf(entry) for entry in paths]
        self.index = {}
        self.names = names
        for i, leaf in enumerate(self.leaves):
            if leaf.path not in leaves:
                known = ", ".join(_show(p) for p in list(leaves)[:8]) + (", ..." if len(leaves) > 8 else "")
                raise ValueError(f"{where}: paths[{i}] = {_show(leaf.path)} is not a leaf of params (leaves: {known})")
            if leaf.path in self.index:
                raise ValueError(f"{where}: paths[{self.index[leaf.path]}] and paths[{i}] are both "
                                 f"{_show(leaf.path)}; each torch parameter needs its own JAX leaf")
            self.index[leaf.path] = i
        self.params = [leaves[leaf.path] for leaf in self.leaves]

    def describe(self, i: int) -> str:
        name = f" ({self.names[i]!r})" if self.names and i < len(self.names) and self.names[i] is not None else ""
        return f"torch parameter {i}{name} = JAX leaf {_show(self.leaves[i].path)}"

    def find(self, where: str, path: tuple, state_path: str) -> int:
        if path not in self.index:
            raise ValueError(f"{where}: the optimizer state at {state_path} has an entry for the JAX leaf "
                             f"{_show(path)}, which no torch parameter in `paths` names")
        return self.index[path]


def _groups_of(where: str, state_dict: Any) -> list[dict]:
    if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
        raise ValueError(f"{where}: expected a torch.optim optimizer's state_dict() (a dict with 'state' and "
                         f"'param_groups'), got {type(state_dict).__name__}")
    return state_dict["param_groups"]


def _torch_class(where: str, groups: list[dict]) -> str:
    names = set()
    for group in groups:
        keys = set(group)
        found = [name for name, entry in TORCH_OPTIMIZERS.items() if entry.signature <= keys]
        if not found:
            raise ValueError(f"{where}: the param_groups' hyperparameters {sorted(keys - {'params'})} are not those "
                             f"of any torch.optim class optimjax.port knows ({', '.join(TORCH_OPTIMIZERS)})")
        names.add(found[0])
    if len(names) > 1:
        raise ValueError(f"{where}: param_groups of different optimizers ({sorted(names)})")
    return names.pop()


def _walk(where: str, state: Any, visit: Callable[[str, Any, StateMap], Any]) -> Any:
    """`state` with every node of a type in STATE_MAPS replaced by `visit(path, node, map)`, through optax's
    wrappers (chain, masked, partition, inject_hyperparams: their counts are visited as a count-only map). Any
    other array in the state is an error: port does not know what torch holds for it."""
    inject = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)
    count_only = StateMap((), {})

    def is_known(node):
        return type(node) in STATE_MAPS or isinstance(node, inject)

    def one(path, node):
        path = jax.tree_util.keystr(path)
        if type(node) in STATE_MAPS:
            return visit(path, node, STATE_MAPS[type(node)])
        if isinstance(node, inject):
            node = visit(path, node, count_only)
            if isinstance(node, optax.InjectStatefulHyperparamsState):
                node = node._replace(hyperparams_states={
                    k: visit(f"{path}.hyperparams_states[{k!r}]", s, count_only) if hasattr(s, "count") else s
                    for k, s in node.hyperparams_states.items()})
            return node._replace(inner_state=_walk(where, node.inner_state, visit))
        raise ValueError(f"{where}: the optimizer state holds an array at {path} that optimjax.port has no table "
                         f"entry for (it knows {', '.join(t.__name__ for t in STATE_MAPS)} and optax's chain, "
                         f"masked, partition and inject_hyperparams)")

    return jax.tree_util.tree_map_with_path(one, state, is_leaf=is_known)


def _field_leaves(value: Any) -> list[tuple[tuple, Any]]:
    return [(_plain(p), leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(value)]


# --- torch -> optimjax -----------------------------------------------------------------------------------------


def load_state_dict(tx: optax.GradientTransformation, params: Any, state_dict: dict, paths: Any,
                    step: int | None = None) -> Any:
    """The state of `tx` for `params` that continues the run a torch optimizer saved in `state_dict`.

    Args:
      tx: the optimjax (or optax-composed) transformation with the torch optimizer's hyperparameters; its state
        template is `tx.init(params)`.
      params: the JAX parameters (the values torch's parameters have when the state was saved).
      state_dict: `torch_optimizer.state_dict()` (or one read back with `torch.load`).
      paths: for each torch parameter index in param-group order, its JAX leaf: a dict key, a key path or a `Leaf`
        (with a layout conversion, e.g. `transposed("kernel")`).
      step: the number of steps taken, needed only when torch keeps no `step` (SGD) and the state counts steps
        (momentum, a schedule); checked against torch's `step` otherwise.

    Every per-element tensor is converted with the leaf's `to_jax`, checked against the shape of the state entry
    it fills and cast to that entry's dtype (a complex tensor only into a complex entry); the step count comes from
    torch's per-parameter `step`, which must be the same for every parameter. Raises ValueError, naming the torch
    key, the parameter and the JAX leaf, when the state_dict is another optimizer's (another class, or another
    option such as amsgrad, centered or momentum), when a parameter is missing or extra, on a shape mismatch, and
    when torch has created state for some parameters but not yet for others (it does so at a parameter's first
    step with a gradient; optimjax steps all together). A state_dict with no state at all (a torch optimizer that
    has not stepped) gives `tx.init(params)`. Nothing is returned unless everything converted.
    """
    where = "optimjax.port.load_state_dict"
    groups = _groups_of(where, state_dict)
    torch_name = _torch_class(where, groups)
    entry = TORCH_OPTIMIZERS[torch_name]
    order = [i for g in groups for i in g["params"]]
    group_of = [g for g in groups for _ in g["params"]]
    paths = list(paths)
    if len(order) != len(paths):
        raise ValueError(f"{where}: the state_dict's param_groups hold {len(order)} parameters, `paths` names "
                         f"{len(paths)}")
    leaves = _Params(where, params, paths, [n for g in groups for n in g.get("param_names", [None] * len(g["params"]))])
    template = tx.init(params)
    _check_keys(where, torch_name, template, leaves, group_of, load=True)
    per_param = [state_dict["state"].get(i) for i in order]
    if not entry.eager and not any(per_param):
        return template  # torch has not stepped: its state is the fresh one

    steps = {k: float(state["step"]) for k, state in enumerate(per_param) if state and "step" in state}
    for k, value in steps.items():
        first = min(steps)
        if value != steps[first]:
            raise ValueError(f"{where}: torch's 'step' is {steps[first]:g} for {leaves.describe(first)} but "
                             f"{value:g} for {leaves.describe(k)}; optimjax keeps one step count for all parameters")
    torch_step = int(next(iter(steps.values()))) if steps else None
    if step is not None and torch_step is not None and int(step) != torch_step:
        raise ValueError(f"{where}: step={step} but torch's state says {torch_step} steps were taken")
    count = torch_step if torch_step is not None else step

    def torch_value(path, key, k):
        state = per_param[k]
        if not state:
            raise ValueError(f"{where}: torch has no state yet for {leaves.describe(k)} (torch creates it at the "
                             f"parameter's first step with a gradient) while it has for others; optimjax steps "
                             f"all parameters together and cannot continue this run")
        if key not in state:
            raise ValueError(f"{where}: the state_dict has no {key!r} for {leaves.describe(k)}: it is another "
                             f"optimizer's or option's state (torch.optim.{torch_name} keys there: "
                             f"{sorted(state)}; this optimizer's state at {path} needs {key!r})")
        return state[key]

    def fill(path, node, m):
        _check_class(where, torch_name, path, node, m)
        new = {}
        for field, key in m.arrays.items():
            value = getattr(node, field)
            if value is None:
                continue
            converted = {}
            for leaf_path, leaf in _field_leaves(value):
                k = leaves.find(where, leaf_path, path)
                if not m.has(field, leaves.params[k].shape):
                    converted[leaf_path] = leaf  # a placeholder torch keeps no key for
                    continue
                converted[leaf_path] = _to_jax(where, torch_value(path, key, k), leaves.leaves[k], leaf, key,
                                               leaves.describe(k))
            new[field] = jax.tree_util.tree_map_with_path(lambda p, leaf: converted[_plain(p)], value)
        covered = sorted({leaves.find(where, p, path) for field in m.arrays if getattr(node, field) is not None
                          for p, _ in _field_leaves(getattr(node, field))})
        for field, key in m.scalars.items():
            values = {k: float(torch_value(path, key, k)) for k in covered}
            if len(set(values.values())) > 1:
                raise ValueError(f"{where}: torch's {key!r} differs between parameters ({values}); optimjax keeps "
                                 f"one {field} for all")
            if values:
                old = getattr(node, field)
                new[field] = jnp.asarray(next(iter(values.values())), dtype=old.dtype)
        if m.count is not None:
            if count is None:
                raise ValueError(f"{where}: the state at {path} counts steps but torch.optim.{torch_name} keeps no "
                                 f"'step'; pass step=N, the number of steps the torch optimizer took")
            old = getattr(node, m.count)
            new[m.count] = jnp.asarray(count, dtype=old.dtype)
        return node._replace(**new)

    for k, state_k in enumerate(per_param):
        expected = entry.keys(group_of[k], leaves.params[k].shape)
        if state_k and set(state_k) != expected:
            raise ValueError(f"{where}: torch's state for {leaves.describe(k)} has keys {sorted(state_k)}, but "
                             f"torch.optim.{torch_name} with its group's options keeps {sorted(expected)}")
    return _walk(where, template, fill)


def _check_keys(where, torch_name, state, leaves, group_of, load):
    """Raise unless `state` holds, for every parameter, the per-parameter keys torch's class keeps for it with its
    group's options ('step' aside: it comes from the count or the step argument)."""
    ours = [set() for _ in leaves.leaves]

    def collect(path, node, m):
        _check_class(where, torch_name, path, node, m)
        for field, key in m.arrays.items():
            if getattr(node, field) is not None:
                for leaf_path, _ in _field_leaves(getattr(node, field)):
                    k = leaves.find(where, leaf_path, path)
                    ours[k] |= ({key} if m.has(field, leaves.params[k].shape) else set()) | set(m.scalars.values())
        return node

    _walk(where, state, collect)
    for k, group in enumerate(group_of):
        expected = TORCH_OPTIMIZERS[torch_name].keys(group, leaves.params[k].shape) - {"step"}
        if ours[k] != expected:
            extra, missing = sorted(expected - ours[k]), sorted(ours[k] - expected)
            raise ValueError(
                f"{where}: for {leaves.describe(k)}, torch.optim.{torch_name} with its group's options keeps "
                f"{sorted(expected)} (besides 'step'), this optimizer's state {sorted(ours[k])}"
                + (f"; {'the state_dict has' if load else 'torch needs'} {extra}, which this optimizer has no "
                   f"place for" if extra else "")
                + (f"; this optimizer needs {missing}, which {'the state_dict lacks' if load else 'torch keeps not'}"
                   if missing else "")
                + ": another optimizer, or another option (amsgrad, centered, momentum)")


def _check_class(where, torch_name, path, node, m):
    if m.torch and torch_name not in m.torch:
        raise ValueError(f"{where}: the state_dict is torch.optim.{torch_name}'s (recognised from its param_groups' "
                         f"hyperparameters), but this optimizer's state at {path} is {type(node).__name__}, which "
                         f"holds torch.optim.{'/'.join(m.torch)}'s")
    return node


def _to_jax(where, tensor, leaf: Leaf, template, key, who):
    import torch

    tensor = tensor.detach().cpu() if isinstance(tensor, torch.Tensor) else torch.as_tensor(tensor)
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.to(torch.float32)  # numpy has no bfloat16; exact
    array = tensor.numpy()
    if leaf.to_jax is not None:
        array = leaf.to_jax(array)
    if array.shape != template.shape:
        raise ValueError(f"{where}: torch's {key!r} for {who} has shape {tuple(tensor.shape)}"
                         f"{' (' + str(array.shape) + ' after to_jax)' if leaf.to_jax is not None else ''}, but the "
                         f"state entry it fills has shape {template.shape} (a layout to convert? see "
                         f"optimjax.port.transposed)")
    if np.iscomplexobj(array) and not jnp.iscomplexobj(template):
        raise ValueError(f"{where}: torch's {key!r} for {who} is complex ({tensor.dtype}), the state entry it "
                         f"fills is {template.dtype}")
    out = jnp.asarray(array, dtype=template.dtype)
    return jax.device_put(out, template.sharding) if isinstance(template, jax.Array) else out


# --- optimjax -> torch -----------------------------------------------------------------------------------------


def state_dict(tx: optax.GradientTransformation, state: Any, params: Any, paths: Any, optimizer: Any,
               step: int | None = None) -> dict:
    """A torch.optim `state_dict()` holding `state` (the state of `tx` for `params`), loadable by
    `optimizer.load_state_dict` to continue the run in torch.

    Args:
      tx: the optimjax transformation (its `init(params)` gives the state's structure, checked).
      state: the state of `tx` to convert.
      params: the parameters the state is for.
      paths: as in `load_state_dict` (a `Leaf` with `to_jax` needs `to_torch` here).
      optimizer: the torch optimizer the result is for, or its `state_dict()`: its class and `param_groups`
        (their hyperparameters and sizes) are those of the result, since torch's `load_state_dict` replaces the
        groups' hyperparameters by the saved ones. For a live optimizer, the shapes of its parameters are checked.
      step: the number of steps taken, needed only when torch keeps a `step` and `state` counts none (Adagrad
        without lr_decay, Adadelta, RMSprop without momentum); checked against the state's count otherwise.

    Per-element tensors are converted with the leaf's `to_torch` and keep the state's dtype (bfloat16 goes through
    float32; torch casts to the parameter's dtype on loading); `step` and the per-parameter scalars (NAdam's
    `mu_product`, ASGD's `eta` and `mu`) are 0-d tensors in torch's scalar dtype (float64 under a float64 default
    dtype, else float32). A state that has not stepped (count 0) gives no per-parameter state, as a fresh torch
    optimizer has (Adagrad: its initial state); a state that counts no steps (Muon's) is always written (torch
    starting from a zero momentum buffer is torch starting fresh).
    """
    import torch

    where = "optimjax.port.state_dict"
    live = hasattr(optimizer, "param_groups") and hasattr(optimizer, "state_dict")
    groups = optimizer.param_groups if live else _groups_of(where, optimizer)
    torch_name = _torch_class(where, groups)
    entry = TORCH_OPTIMIZERS[torch_name]
    paths = list(paths)
    sizes = [len(g["params"]) for g in groups]
    if sum(sizes) != len(paths):
        raise ValueError(f"{where}: the torch optimizer's param_groups hold {sum(sizes)} parameters ({sizes} per "
                         f"group), `paths` names {len(paths)}")
    leaves = _Params(where, params, paths, [n for g in groups for n in g.get("param_names", [None] * len(g["params"]))])
    expected_structure = jax.tree.structure(jax.eval_shape(tx.init, params))
    if jax.tree.structure(state) != expected_structure:
        raise ValueError(f"{where}: `state` is not the state of `tx` for `params`: its tree structure is "
                         f"{jax.tree.structure(state)}, tx.init(params) gives {expected_structure}")
    _check_keys(where, torch_name, state, leaves, [g for g in groups for _ in g["params"]], load=False)
    if live:
        for k, p in enumerate(q for g in groups for q in g["params"]):
            shape = _to_torch(leaves.leaves[k], np.zeros(leaves.params[k].shape, np.float32)).shape
            if tuple(p.shape) != shape:
                raise ValueError(f"{where}: {leaves.describe(k)} has shape {tuple(p.shape)} in torch, but "
                                 f"{leaves.params[k].shape} in JAX ({shape} in torch's layout)")

    per_param: dict[int, dict] = {k: {} for k in range(len(paths))}
    counts: dict[str, int] = {}

    def read(path, node, m):
        _check_class(where, torch_name, path, node, m)
        covered = set()
        for field, key in m.arrays.items():
            value = getattr(node, field)
            if value is None:
                continue
            for leaf_path, leaf in _field_leaves(value):
                k = leaves.find(where, leaf_path, path)
                covered.add(k)
                if not m.has(field, leaves.params[k].shape):
                    continue
                per_param[k][key] = _tensor(_to_torch(leaves.leaves[k], _numpy(leaf)))
        for field, key in m.scalars.items():
            for k in covered:
                per_param[k][key] = torch.tensor(float(getattr(node, field)), dtype=_scalar_dtype())
        if m.count is not None:
            counts[path] = int(getattr(node, m.count))
        return node

    _walk(where, state, read)
    if len(set(counts.values())) > 1:
        raise ValueError(f"{where}: the step counts in `state` differ ({counts}); torch keeps one per parameter")
    count = next(iter(counts.values())) if counts else None
    if step is not None and count is not None and int(step) != count:
        raise ValueError(f"{where}: step={step} but the state counts {count} steps")
    count = count if count is not None else step

    position = 0
    out_state, out_groups = {}, []
    for group in groups:
        for _ in group["params"]:
            k, position = position, position + 1
            expected = entry.keys(group, leaves.params[k].shape)
            have = dict(per_param[k])
            if "step" in expected:
                if count is None:
                    raise ValueError(f"{where}: torch.optim.{torch_name} keeps a 'step' per parameter, which this "
                                     f"optimizer's state does not count; pass step=N, the number of steps taken")
                have["step"] = torch.tensor(float(count), dtype=_scalar_dtype())
            if set(have) != expected:
                raise ValueError(f"{where}: for {leaves.describe(k)} this optimizer's state gives {sorted(have)}, "
                                 f"but torch.optim.{torch_name} with its group's options keeps {sorted(expected)}: "
                                 f"the torch optimizer is not this one (or has another option: amsgrad, centered, "
                                 f"momentum)")
            if expected and (count is None or count or entry.eager):  # no count at all (Muon): can't tell
                out_state[k] = have
        saved = {name: copy.deepcopy(value) for name, value in group.items() if name != "params"}
        saved["params"] = list(range(position - len(group["params"]), position))
        out_groups.append(saved)
    return {"state": out_state, "param_groups": out_groups}


def _numpy(leaf: jax.Array) -> np.ndarray:
    array = np.asarray(leaf)
    if array.dtype.kind == "V" or array.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        array = array.astype(np.float32)  # torch.from_numpy knows no ml_dtypes; exact
    return array


def _to_torch(leaf: Leaf, array: np.ndarray) -> np.ndarray:
    if leaf.to_jax is not None and leaf.to_torch is None:
        raise ValueError(f"optimjax.port.state_dict: the Leaf for {_show(leaf.path)} has to_jax but no to_torch; "
                         f"give both (optimjax.port.transposed does)")
    return array if leaf.to_torch is None else leaf.to_torch(array)


def _tensor(array: np.ndarray):
    import torch

    return torch.from_numpy(np.array(array, order="C"))  # a copy; 0-d stays 0-d


def _scalar_dtype():
    import torch

    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


# --- a torch optimizer as an optimjax transformation ----------------------------------------------------------


def _one_cycle(s: Any) -> dict[str, Any]:
    """The arguments of `schedules.one_cycle_lr` / `one_cycle_momentum` shared by every group of torch's
    OneCycleLR `s` (which keeps its phases in the scheduler; each group's peak, first and last lr and momenta in
    the group)."""
    phases = s._schedule_phases
    return dict(total_steps=s.total_steps, pct_start=(float(phases[0]["end_step"]) + 1) / s.total_steps,
                anneal_strategy=s._anneal_func_type, three_phase=len(phases) == 3)


def _one_cycle_lr(s: Any, group: dict) -> Callable:
    top, first, last = _f(group["max_lr"]), _f(group["initial_lr"]), _f(group["min_lr"])
    return schedules.one_cycle_lr(top, div_factor=top / first, final_div_factor=first / last, **_one_cycle(s))


def _cyclic(s: Any) -> dict[str, Any]:
    """The arguments of `schedules.cyclic_lr` / `cyclic_momentum` that give torch's CyclicLR `s` (which keeps the
    cycle as total_size and step_ratio, floats of the integer step sizes)."""
    up = int(round(s.total_size * s.step_ratio))
    return dict(step_size_up=up, step_size_down=int(round(s.total_size)) - up, mode=s.mode, gamma=_f(s.gamma),
                scale_fn=s._scale_fn_custom, scale_mode=s.scale_mode)


def _group_index(s: Any, group: dict) -> int:
    return next(i for i, g in enumerate(s.optimizer.param_groups) if g is group)


def _cyclic_lr(s: Any, group: dict) -> Callable:
    i = _group_index(s, group)
    return schedules.cyclic_lr(_f(s.base_lrs[i]), _f(s.max_lrs[i]), **_cyclic(s))


# The optimizers whose momentum torch's OneCycleLR and CyclicLR may cycle (cycle_momentum=True), and the group key
# they set.
CYCLED_MOMENTUM = {"SGD": "momentum", "Adam": "betas", "NAdam": "betas"}


def _cycled_momentum(where: str, scheduler: Any, group: dict, torch_name: str) -> Callable | None:
    """The schedule torch's OneCycleLR or CyclicLR gives the group's momentum (Adam's beta1, SGD's momentum), or
    None when the scheduler leaves the momentum alone."""
    name = type(scheduler).__name__
    if name not in ("OneCycleLR", "CyclicLR") or not scheduler.cycle_momentum:
        return None
    if torch_name not in CYCLED_MOMENTUM:
        make = "one_cycle_momentum" if name == "OneCycleLR" else "cyclic_momentum"
        raise NotImplementedError(f"{where}: {name} cycles the momentum of {torch_name}, which from_torch "
                                  f"reads only for {', '.join(CYCLED_MOMENTUM)}: pass cycle_momentum=False, or build "
                                  f"the optimizer with optimjax.schedules.{make} through optax.inject_hyperparams "
                                  f"by hand")
    low, high = _f(group["base_momentum"]), _f(group["max_momentum"])
    if name == "OneCycleLR":
        return schedules.one_cycle_momentum(base_momentum=low, max_momentum=high, **_one_cycle(scheduler))
    return schedules.cyclic_momentum(low, high, **_cyclic(scheduler))


def _with_momentum(build: Callable, group: dict, key: str, learning_rate: Any, momentum: Any):
    """`build(group, learning_rate)` with the group's momentum (SGD's `momentum`, or beta1 of `betas`) replaced."""
    group = dict(group, **{key: (momentum, *group["betas"][1:]) if key == "betas" else momentum})
    return build(group, learning_rate)


TORCH_SCHEDULERS: dict[str, Callable[[Any, dict], Callable]] = {
    # torch scheduler class -> (scheduler, a param group) -> the optimjax schedule of that group's lr
    "StepLR": lambda s, g: schedules.step_lr(_lr(g), s.step_size, s.gamma),
    "MultiStepLR": lambda s, g: schedules.multi_step_lr(_lr(g), sorted(s.milestones.elements()), s.gamma),
    "ConstantLR": lambda s, g: schedules.constant_lr(_lr(g), s.factor, s.total_iters),
    "LinearLR": lambda s, g: schedules.linear_lr(_lr(g), s.start_factor, s.end_factor, s.total_iters),
    "ExponentialLR": lambda s, g: schedules.exponential_lr(_lr(g), s.gamma),
    "PolynomialLR": lambda s, g: schedules.polynomial_lr(_lr(g), s.total_iters, s.power),
    "CosineAnnealingLR": lambda s, g: schedules.cosine_annealing_lr(_lr(g), s.T_max, s.eta_min),
    "CosineAnnealingWarmRestarts": lambda s, g: schedules.cosine_annealing_warm_restarts(_lr(g), s.T_0, s.T_mult,
                                                                                         s.eta_min),
    "OneCycleLR": _one_cycle_lr,  # and, with cycle_momentum, the momentum: _cycled_momentum
    "CyclicLR": _cyclic_lr,  # likewise
    # the composites: their schedulers read in turn (each from the same group's initial lr, as in torch)
    "SequentialLR": lambda s, g: schedules.sequential_lr([_schedule_of(x, g, s) for x in s._schedulers],
                                                          s._milestones),
    "ChainedScheduler": lambda s, g: schedules.chained_scheduler([_schedule_of(x, g, s) for x in s._schedulers]),
}


def _lr(group: dict) -> float:
    return _f(group["initial_lr"])


def _schedule_of(scheduler: Any, group: dict, within: Any = None) -> Callable:
    """The optimjax schedule of a torch scheduler for `group`'s lr (`within`: the SequentialLR or ChainedScheduler
    it is part of)."""
    name = type(scheduler).__name__
    part = f" in {type(within).__name__}" if within is not None else ""
    if name not in TORCH_SCHEDULERS:
        raise NotImplementedError(f"optimjax.port.from_torch: scheduler={name}{part} is not supported (supported: "
                                  f"{', '.join(TORCH_SCHEDULERS)}); pass the optimjax.schedules schedule as "
                                  f"each group's learning rate instead")
    if within is not None and getattr(scheduler, "cycle_momentum", False):  # its lr alone would be silently wrong
        raise NotImplementedError(f"optimjax.port.from_torch: scheduler={name}{part} cycles the momentum, which "
                                  f"from_torch reads only for a {name} on its own: pass cycle_momentum=False, or "
                                  f"build the optimizer with optimjax.schedules through optax.inject_hyperparams")
    return TORCH_SCHEDULERS[name](scheduler, group)


def from_torch(optimizer: Any, paths: Any = None, scheduler: Any = None) -> optax.GradientTransformation:
    """The optimjax transformation that runs `optimizer` (a live torch.optim optimizer): its class, each param
    group's hyperparameters, and its groups as an `optax.partition` over the JAX leaves `paths` names.

    Args:
      optimizer: a torch.optim optimizer of a class in `TORCH_OPTIMIZERS`.
      paths: as in `load_state_dict`; needed with more than one param group (each JAX leaf is labelled with the
        group of its torch parameter; a leaf not named is an error at `init`).
      scheduler: None, or the optimizer's torch LR scheduler, of a class in `TORCH_SCHEDULERS` (StepLR,
        MultiStepLR, ConstantLR, LinearLR, ExponentialLR, PolynomialLR, CosineAnnealingLR,
        CosineAnnealingWarmRestarts, OneCycleLR, CyclicLR, and SequentialLR or ChainedScheduler of those): each
        group's learning rate is then the `optimjax.schedules` schedule of that group (from its `initial_lr`;
        OneCycleLR's from its `max_lr`, `initial_lr` and `min_lr`, CyclicLR's from its base and max lr).
        OneCycleLR and CyclicLR with `cycle_momentum=True` (their default) also cycle the momentum, SGD's or
        Adam's / AdamW's / NAdam's beta1: that group's optimizer is then built through `optax.inject_hyperparams`
        with `learning_rate` and `momentum` as its hyperparameters. Others (LambdaLR, MultiplicativeLR: a Python
        function; ReduceLROnPlateau: reads the loss) raise NotImplementedError: build those with
        `optimjax.schedules` (or `optimjax.plateau`) by hand.

    Without a scheduler the learning rate is the group's current `lr` (what the next `step()` would use).
    Hyperparameters that do not change the arithmetic (foreach, fused, capturable, differentiable) are ignored.
    """
    where = "optimjax.port.from_torch"
    groups = optimizer.param_groups
    torch_name = _torch_class(where, groups)
    build = TORCH_OPTIMIZERS[torch_name].build
    if scheduler is None:
        transforms = [build(group, _f(group["lr"])) for group in groups]
    else:
        if scheduler.optimizer is not optimizer:
            raise ValueError(f"{where}: the scheduler steps another optimizer than the one given")
        transforms = []
        for group in groups:
            lr, momentum = _schedule_of(scheduler, group), _cycled_momentum(where, scheduler, group, torch_name)
            if momentum is None:
                transforms.append(build(group, lr))
            else:  # torch sets the group's momentum every step: an injected hyperparameter
                key = CYCLED_MOMENTUM[torch_name]
                cycled = optax.inject_hyperparams(functools.partial(_with_momentum, build, group, key))
                transforms.append(cycled(learning_rate=lr, momentum=momentum))
    if len(groups) == 1:
        return transforms[0]
    if paths is None:
        raise ValueError(f"{where}: the optimizer has {len(groups)} param groups; pass paths (the JAX leaf of "
                         f"each torch parameter) to say which leaves belong to which")
    sizes = [len(g["params"]) for g in groups]
    paths = [_as_leaf(entry).path for entry in paths]
    if sum(sizes) != len(paths):
        raise ValueError(f"{where}: the optimizer's param_groups hold {sum(sizes)} parameters ({sizes} per group), "
                         f"`paths` names {len(paths)}")
    label_of = {path: f"group_{g}" for g, size in enumerate(sizes)
                for path in paths[sum(sizes[:g]):sum(sizes[:g]) + size]}

    def label(path, leaf):
        path = _plain(path)
        if path not in label_of:
            raise ValueError(f"{where}: the JAX leaf {_show(path)} is in no param group (no torch parameter in "
                             f"`paths` names it)")
        return label_of[path]

    return optax.partition({f"group_{g}": tx for g, tx in enumerate(transforms)},
                           lambda params: jax.tree_util.tree_map_with_path(label, params))
