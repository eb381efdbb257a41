"""One parameter's optimizer state, and the layout a configuration of an optimizer expects of it
(checked wherever a state comes in: an update, a checkpoint, a torch state_dict)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class OptState:
    """One parameter's optimizer state: named tensors, per-parameter scalars and, with
    multi_precision on a float16 weight, the float32 master copy. Iterating yields the tensors in
    spec order (like MXNet's tuple of states). `carry`: for a spec with `option carry_rows`, the
    rows (sorted int64) that earlier lazy updates left pending for the next one, or None."""
    __slots__ = ("owner", "shape", "dtype", "tensors", "scalars", "master", "carry")

    def __init__(self, owner: str, shape, dtype, tensors: dict, scalars: dict, master=None, carry=None):
        self.owner, self.shape, self.dtype = owner, tuple(shape), np.dtype(dtype)
        self.tensors, self.scalars, self.master, self.carry = tensors, scalars, master, carry

    def __iter__(self):
        return iter(self.tensors.values())

    def __len__(self):
        return len(self.tensors)

    def __repr__(self):
        parts = [f"{k}: {v.dtype}{list(v.shape)}" for k, v in self.tensors.items()]
        parts += [f"{k}={v!r}" for k, v in self.scalars.items()]
        if self.master is not None:
            parts.append("master float32")
        if self.carry is not None:
            parts.append(f"{len(self.carry)} carried rows")
        return f"OptState({self.owner}, {', '.join(parts) or 'empty'})"



class StateLayout(NamedTuple):
    """What `Optimizer.state_layout(shape)` says a state holds: its tensors' names in spec order, its
    scalars' names, sorted, and (given the weight's shape) each tensor's array shape."""
    tensors: tuple
    scalars: tuple
    shapes: tuple = ()

    def matches(self, tensors, scalars) -> bool:
        return tuple(tensors) == self.tensors and tuple(sorted(scalars)) == self.scalars

    def mismatch(self, tensors, scalars, owner: str) -> str | None:
        """None when a state with these tensor and scalar names fits, else what differs."""
        if tuple(tensors) != self.tensors:
            return (f"holds {list(tensors)} but this configuration of {owner} needs "
                    f"{list(self.tensors)} (hyperparameters changed since the state was made?)")
        if tuple(sorted(scalars)) != self.scalars:
            return f"holds scalars {sorted(scalars)} but {owner} needs {list(self.scalars)}"
        return None

    def shape_of(self, name):
        """The array shape tensor `name` must have (the layout was made with the weight's shape)."""
        return self.shapes[self.tensors.index(name)]
