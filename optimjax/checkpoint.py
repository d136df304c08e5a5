"""Restore optimizer state from an Orbax checkpoint, refusing one written for another optimizer or parameter tree.

Orbax (`orbax.checkpoint`) stores the state; this module only compares what a checkpoint holds with what the
caller expects before restoring, so that a mismatch is reported as a list of the differing entries:

    checkpoint /ckpt/100 does not match the target:
      in the target but not in the checkpoint: opt_state.1.mu_product
      in the checkpoint but not in the target: opt_state.1.nu_max.w
      shape differs at params.w: checkpoint (3, 2), target (4, 2)

instead of a shape error from deep inside the restore, or a silent cast. The entries are named as Orbax names
them: the keys of the path joined by dots (tuple and NamedTuple positions are numbers or field names).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

try:
    import orbax.checkpoint as ocp
except ImportError as _error:  # orbax is an optional dependency: the checkpoint extra
    raise ImportError(
        "optimjax.checkpoint needs Orbax (the orbax-checkpoint package): pip install 'optimjax[checkpoint]'"
    ) from _error


def _key_name(key: Any) -> str:
    """One step of a jax key path as Orbax writes it: a dict key, a sequence index or an attribute name."""
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _flatten(tree: Any) -> dict[str, Any]:
    """{dotted path: leaf} for every leaf of `tree`."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {".".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def _describe(paths: list[str], limit: int = 8) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def differences(directory: str | os.PathLike, target: Any) -> list[str]:
    """The differences between the arrays stored in the Orbax checkpoint at `directory` and the pytree `target`
    (concrete arrays or `jax.ShapeDtypeStruct`s, e.g. `jax.eval_shape(tx.init, params)` or an `nnx.state`):
    entries only one side has, and entries whose shape or dtype differ. Empty when the checkpoint fits.
    """
    path = checkpoint_path(directory)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            item = checkpointer.metadata(path).item_metadata
    except Exception as err:  # noqa: BLE001  (Orbax raises many kinds on unreadable metadata)
        raise ValueError(f"checkpoint {path} cannot be read (corrupted?): {type(err).__name__}: {err}") from err
    if item is None or getattr(item, "tree", None) is None:
        raise ValueError(f"checkpoint {path} cannot be read: it holds no Orbax metadata (not a checkpoint written by "
                         "orbax.checkpoint.StandardCheckpointer, or an unfinished or corrupted one)")
    stored = _flatten(item.tree)
    wanted = _flatten(target)
    out = []
    missing = [p for p in wanted if p not in stored]
    extra = [p for p in stored if p not in wanted]
    if missing:
        out.append(f"in the target but not in the checkpoint: {_describe(missing)}")
    if extra:
        out.append(f"in the checkpoint but not in the target: {_describe(extra)}")
    for path, leaf in wanted.items():
        if path not in stored:
            continue
        meta, shape, dtype = stored[path], np.shape(leaf), np.dtype(getattr(leaf, "dtype", None) or jax.dtypes.result_type(leaf))
        if getattr(meta, "shape", shape) != shape:
            out.append(f"shape differs at {path}: checkpoint {tuple(meta.shape)}, target {shape}")
        elif getattr(meta, "dtype", None) is not None and np.dtype(meta.dtype) != dtype:
            out.append(f"dtype differs at {path}: checkpoint {np.dtype(meta.dtype)}, target {dtype}")
    return out


def check_compatible(directory: str | os.PathLike, target: Any) -> None:
    """Raise ValueError, listing every difference, unless the Orbax checkpoint at `directory` holds exactly the
    entries of `target` with the same shapes and dtypes (see `differences`)."""
    found = differences(directory, target)
    if found:
        raise ValueError(
            f"checkpoint {checkpoint_path(directory)} does not match the target (was it written for another optimizer "
            "or parameter tree?):\n  " + "\n  ".join(found)
        )


def restore(directory: str | os.PathLike, target: Any) -> Any:
    """Restore the pytree saved with `orbax.checkpoint.StandardCheckpointer` at `directory` into the structure,
    shapes, dtypes and shardings of `target`, after `check_compatible` has found nothing that differs.

        ocp.StandardCheckpointer().save(path, {"params": params, "opt_state": opt_state})   # then wait
        restored = optimjax.checkpoint.restore(path, {"params": params, "opt_state": tx.init(params)})

    `target` may be abstract: `jax.eval_shape(tx.init, params)`, or for Flax nnx `nnx.state(nnx.eval_shape(...))`.
    A `jax.ShapeDtypeStruct` with a `sharding` restores each array directly onto its devices.
    """
    path = checkpoint_path(directory)
    check_compatible(path, target)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(path, target)
    except Exception as err:  # noqa: BLE001  (a data file that fails to decode, truncated, ...)
        raise ValueError(f"checkpoint {path} cannot be restored (corrupted?): {type(err).__name__}: {err}") from err


def checkpoint_path(directory: str | os.PathLike) -> Path:
    """`directory` as an absolute path (a relative one is taken from the working directory; Orbax needs absolute
    paths), after checking that it exists and is a directory: FileNotFoundError or NotADirectoryError naming it
    otherwise, where Orbax would only log a warning and return empty metadata."""
    path = Path(directory).expanduser().absolute()
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, f"no checkpoint at {path}", str(path))
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{path} is not a checkpoint directory", str(path))
    return path
