"""Updater: the closure kvstore-style training loops call, with states saved without pickle."""
from __future__ import annotations

import io
import json

import numpy as np

from .optimizer import Optimizer, OptState

FORMAT = "optforge-states"
VERSION = 1


class Updater:
    """Keeps one state per parameter index and applies `optimizer` to it: `upd(index, grad, weight)`.
    `index`, `grad` and `weight` may be lists (one update call for all of them)."""

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"Updater needs an optforge Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.states: dict = {}
        self.states_synced: dict = {}
        self.aggregate_updates = False

    def __call__(self, index, grad, weight):
        if isinstance(index, (list, tuple)):
            indices, grads, weights = list(index), grad, weight
            if not isinstance(grads, (list, tuple)) or not isinstance(weights, (list, tuple)):
                raise TypeError("index is a list, so grad and weight must be lists too")
            if not len(indices) == len(grads) == len(weights):
                raise ValueError(f"{len(indices)} indices, {len(grads)} grads and {len(weights)} weights")
        else:
            indices, grads, weights = [index], [grad], [weight]
        new = {}
        for i, w in zip(indices, weights):
            if isinstance(i, bytes):
                raise TypeError("index must be an int or a str, got bytes")
            if i not in self.states and i not in new:
                new[i] = self.optimizer.create_state_multi_precision(i, w)
        states = {**self.states, **new}
        opt = self.optimizer
        if not isinstance(index, (list, tuple)):
            opt.update_multi_precision(index, weight, grad, states[index])
        elif opt.aggregate_num > 0:
            # as MXNet: same-dtype groups, at most aggregate_num parameters per update call
            groups: dict = {}
            for i, w, g in zip(indices, weights, grads):
                groups.setdefault(getattr(w, "dtype", None), []).append((i, w, g))
            for group in groups.values():
                for start in range(0, len(group), opt.aggregate_num):
                    ids, ws, gs = zip(*group[start:start + opt.aggregate_num])
                    opt.update_multi_precision(list(ids), list(ws), list(gs), [states[i] for i in ids])
        else:
            for i, w, g in zip(indices, weights, grads):
                opt.update_multi_precision(i, w, g, states[i])
        self.states.update(new)
        for i in new:
            self.states_synced[i] = True

    def sync_state_context(self, state, context):
        return state

    # ---- checkpoints --------------------------------------------------------------------------------
    def get_states(self, dump_optimizer: bool = False) -> bytes:
        """All states as bytes (NPZ without pickle, with a JSON header). With dump_optimizer=True the
        optimizer's configuration, counters and schedule come along, so training resumes exactly."""
        return dumps_states(self.states, self.optimizer if dump_optimizer else None)

    def set_states(self, states: bytes) -> None:
        """Load what get_states returned. Loading never executes code; a damaged or foreign blob
        raises ValueError and leaves this updater unchanged."""
        loaded, optimizer = loads_states(states, self.optimizer)
        if optimizer is not None:
            self.optimizer = optimizer
        self.states = loaded
        self.states_synced = dict.fromkeys(loaded, False)


def get_updater(optimizer: Optimizer) -> Updater:
    """The updater closure for `optimizer` (as `mxnet.optimizer.get_updater`)."""
    return Updater(optimizer)


# ---- the format -----------------------------------------------------------------------------------------
def _key(k):
    if isinstance(k, bool) or not isinstance(k, (int, str)):
        raise TypeError(f"state index {k!r} must be an int or a str")
    return ["int", k] if isinstance(k, int) else ["str", k]


def _unkey(pair):
    if not (isinstance(pair, list) and len(pair) == 2 and pair[0] in ("int", "str")):
        raise ValueError(f"bad state index entry {pair!r}")
    kind, value = pair
    if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"bad state index entry {pair!r}")
    if kind == "str" and not isinstance(value, str):
        raise ValueError(f"bad state index entry {pair!r}")
    return value


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def optimizer_config(opt: Optimizer) -> dict:
    """Everything needed to rebuild `opt` mid-training, as JSON-able data."""
    sched = opt.lr_scheduler
    if sched is not None and not hasattr(sched, "get_config"):
        raise TypeError("the lr_scheduler has no get_config(); it cannot be saved without pickle")
    return {
        "name": opt.spec_name, "spec_hash": opt.spec_hash,
        "hyper": {k: _jsonable(v) for k, v in opt.hyperparameters().items()},
        "base": {"rescale_grad": opt.rescale_grad, "wd": opt.wd, "clip_gradient": opt.clip_gradient,
                 "lr": opt.lr, "begin_num_update": opt.begin_num_update, "multi_precision": opt.multi_precision},
        "lr_scheduler": sched.get_config() if sched is not None else None,
        "idx2name": [[_key(k), v] for k, v in opt.idx2name.items()],
        "lr_mult": [[_key(k), v] for k, v in opt.lr_mult.items()],
        "wd_mult": [[_key(k), v] for k, v in opt.wd_mult.items()],
        "counts": [[_key(k), v] for k, v in opt._index_update_count.items()],
        "num_update": opt.num_update,
        "globals": {k: _jsonable(v) for k, v in opt._globals.items()},
    }


def optimizer_from_config(cfg: dict) -> Optimizer:
    from . import lr_scheduler as lrs
    from .registry import create
    try:
        sched = lrs.from_config(cfg["lr_scheduler"]) if cfg["lr_scheduler"] is not None else None
        base = dict(cfg["base"])
        lr = base.pop("lr")
        opt = create(cfg["name"], **cfg["hyper"], **base, learning_rate=None if sched else lr,
                     lr_scheduler=sched, param_idx2name={_unkey(k): v for k, v in cfg["idx2name"]})
        opt.lr = lr
        opt.lr_mult = {_unkey(k): float(v) for k, v in cfg["lr_mult"]}
        opt.wd_mult = {_unkey(k): float(v) for k, v in cfg["wd_mult"]}
        opt._index_update_count.clear()
        opt._index_update_count.update({_unkey(k): int(v) for k, v in cfg["counts"]})
        opt.num_update = int(cfg["num_update"])
        opt._globals = dict(cfg["globals"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"bad optimizer record in states: {e}") from None
    return opt


def dumps_states(states: dict, optimizer: Optimizer | None = None) -> bytes:
    header = {"format": FORMAT, "version": VERSION, "states": [],
              "optimizer": optimizer_config(optimizer) if optimizer is not None else None}
    arrays = {}
    for n, (k, s) in enumerate(states.items()):
        if not isinstance(s, OptState):
            raise TypeError(f"state {k!r} is not an optforge state")
        entry = {"index": _key(k), "owner": s.owner, "shape": list(s.shape), "dtype": s.dtype.name,
                 "tensors": list(s.tensors), "scalars": {a: _jsonable(b) for a, b in s.scalars.items()},
                 "master": s.master is not None}
        header["states"].append(entry)
        for name, arr in s.tensors.items():
            arrays[f"s{n}.{name}"] = arr
        if s.master is not None:
            arrays[f"s{n}.__master__"] = s.master
    buf = io.BytesIO()
    blob = np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8)
    np.savez(buf, __header__=blob, **arrays)
    return buf.getvalue()


def loads_states(data: bytes, optimizer: Optimizer | None = None):
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"states must be bytes from get_states(), got {type(data).__name__}")
    try:
        with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError, EOFError...
        raise ValueError(f"not an optforge states blob (damaged or foreign): {e}") from None
    try:
        header = json.loads(bytes(files.pop("__header__")).decode())
    except Exception:
        raise ValueError("states blob has no readable header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError("not an optforge states blob")
    if header.get("version") != VERSION:
        raise ValueError(f"states format version {header.get('version')!r} is not supported (expected {VERSION})")
    new_opt = optimizer_from_config(header["optimizer"]) if header.get("optimizer") else None
    owner = (new_opt or optimizer).spec_name if (new_opt or optimizer) is not None else None
    out = {}
    try:
        for n, e in enumerate(header["states"]):
            if owner is not None and e["owner"] != owner:
                raise ValueError(f"states were saved by {e['owner']}, not {owner}")
            tensors = {}
            for name in e["tensors"]:
                arr = files[f"s{n}.{name}"]
                if list(arr.shape) != e["shape"]:
                    raise ValueError(f"state tensor {name!r} has shape {arr.shape}, header says {e['shape']}")
                tensors[name] = np.ascontiguousarray(arr)
            master = files[f"s{n}.__master__"].copy() if e["master"] else None
            out[_unkey(e["index"])] = OptState(e["owner"], e["shape"], np.dtype(e["dtype"]), tensors,
                                               dict(e["scalars"]), master)
    except (KeyError, TypeError) as err:
        raise ValueError(f"states blob is incomplete: {err}") from None
    return out, new_opt
