"""Updater: the closure kvstore-style training loops call, and checkpoints without pickle.

A checkpoint (``get_states`` bytes, or the file ``save_states`` writes) is an uncompressed NPZ
archive. Its member ``__header__`` is UTF-8 JSON::

    {"format": "optforge-states", "version": 2,
     "owner": {"name": "Adam", "spec_hash": "7f2b..."},   # the optimizer the states belong to
     "states": [{"index", "owner", "shape", "dtype", "tensors", "scalars", "master"}, ...],
     "optimizer": {...} or null}                          # with dump_optimizer=True

and ``s<n>.<tensor>`` / ``s<n>.__master__`` hold state n's tensors and float32 master copy.
Loading parses JSON and reads plain float arrays with ``allow_pickle=False``: it never executes
code. Anything else (a pickle, a foreign zip, a truncated or edited file, object arrays, wrong
types in the header) raises ValueError and leaves the updater as it was.

Spec hashes: every checkpoint records the spec hash of the optimizer that wrote it. When the
installed spec's hash differs, the update rule may have changed and a resume would silently
train something else, so loading raises ValueError; pass ``allow_spec_change=True`` to load
anyway (with a warning).
"""
from __future__ import annotations

import io
import json
import numbers
import os
import tempfile
import warnings
import zipfile

import numpy as np

from . import cuda, registry
from .dtypes import BFLOAT16, is_low
from .optimizer import Optimizer, OptState
from .validate import FLOAT_DTYPES, check_array as _check_array, check_index as _check_index

FORMAT = "optforge-states"
VERSION = 2
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "SFC64", "Philox", "MT19937")


class Updater:
    """Keeps one state per parameter index and applies `optimizer` to it: `upd(index, grad, weight)`.
    `index`, `grad` and `weight` may be lists (one update call for all of them). A rejected call
    (ValueError/TypeError) changes no weight, state, counter or stored state."""

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"Updater needs an optforge Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.states: dict = {}
        self.states_synced: dict = {}
        self.aggregate_updates = False

    def __call__(self, index, grad, weight):
        opt = self.optimizer
        is_list = isinstance(index, (list, tuple))
        if is_list:
            for what, seq in (("grad", grad), ("weight", weight)):
                if not isinstance(seq, (list, tuple)):
                    raise TypeError(f"index is a list, so {what} must be a list too, got {type(seq).__name__}")
                if len(seq) != len(index):
                    raise ValueError(f"{len(index)} indices but {len(seq)} {what}s")
            indices, grads, weights = list(index), list(grad), list(weight)
        else:
            indices, grads, weights = [index], [grad], [weight]
        # indices and weights first: states are created only for a well-formed call
        for k, (i, w) in enumerate(zip(indices, weights)):
            where = f"[{k}]" if is_list else ""
            _check_index(i, "index" + where)
            _check_array(w, "weight" + where, writeable=True)
        new, moved = {}, {}
        for i, w in zip(indices, weights):
            if i not in self.states and i not in new:
                new[i] = opt.create_state_multi_precision(i, w)
            elif i in self.states and not self.states_synced.get(i, True) and i not in moved:
                # loaded states live on the host until their weight shows where they belong
                moved[i] = self.sync_state_context(self.states[i], w)
        states = [new[i] if i in new else moved.get(i, self.states.get(i)) for i in indices]
        if not is_list:
            opt.update_multi_precision(index, weight, grad, states[0])
        else:
            # the whole list is validated before the first group is applied
            opt._gather(indices, weights, grads, states)
            if getattr(opt, "gathers", 0):
                # a spec that reduces over all parameters (global_sum, ...): the whole list is one call
                opt.update_multi_precision(indices, weights, grads, states)
            elif opt.aggregate_num > 0:
                # as MXNet: same-dtype groups, at most aggregate_num parameters per update call
                groups: dict = {}
                for entry in zip(indices, weights, grads, states):
                    groups.setdefault(entry[1].dtype, []).append(entry)
                for group in groups.values():
                    for start in range(0, len(group), opt.aggregate_num):
                        ids, ws, gs, ss = zip(*group[start:start + opt.aggregate_num])
                        opt.update_multi_precision(list(ids), list(ws), list(gs), list(ss))
            else:
                for i, w, g, s in zip(indices, weights, grads, states):
                    opt.update_multi_precision(i, w, g, s)
        self.states.update(new)
        self.states.update(moved)
        for i in (*new, *moved):
            self.states_synced[i] = True

    def sync_state_context(self, state, weight):
        """`state` with its arrays where `weight` lives (host or GPU), as MXNet moves loaded states
        to the weight's context; a new OptState, `state` itself when nothing moves."""
        if not isinstance(state, OptState):
            return state
        tensors = {k: cuda.move_like(v, weight) for k, v in state.tensors.items()}
        master = None if state.master is None else cuda.move_like(state.master, weight)
        carry = None if state.carry is None else cuda.move_like(state.carry, weight)
        if master is state.master and carry is state.carry and all(tensors[k] is v for k, v in state.tensors.items()):
            return state
        return OptState(state.owner, state.shape, state.dtype, tensors, dict(state.scalars), master, carry)

    # ---- checkpoints --------------------------------------------------------------------------------
    def get_states(self, dump_optimizer: bool = False) -> bytes:
        """All states as bytes (NPZ without pickle, with a JSON header). With dump_optimizer=True the
        optimizer's configuration, counters, schedule, globals and RNG come along, so training
        resumes bit-identically."""
        return dumps_states(self.states, self.optimizer, dump_optimizer=dump_optimizer)

    def set_states(self, states: bytes, *, allow_spec_change: bool = False) -> None:
        """Load what get_states returned. With an optimizer in the blob it replaces this updater's
        optimizer; without, the current optimizer stays (and restarts its counters, as in MXNet).
        Loading never executes code; a damaged or foreign blob raises ValueError and leaves this
        updater unchanged. See the module doc for `allow_spec_change`."""
        loaded, optimizer = loads_states(states, self.optimizer, allow_spec_change=allow_spec_change)
        if optimizer is not None:
            self.optimizer = optimizer
        self.states = loaded
        self.states_synced = dict.fromkeys(loaded, False)

    def save_states(self, path, dump_optimizer: bool = True) -> None:
        """Write get_states(dump_optimizer) to `path` atomically: a crash mid-save leaves the
        previous file intact."""
        write_atomic(path, self.get_states(dump_optimizer=dump_optimizer))

    def load_states(self, path, *, allow_spec_change: bool = False) -> None:
        """set_states from a file written by save_states."""
        with open(path, "rb") as f:
            data = f.read()
        self.set_states(data, allow_spec_change=allow_spec_change)


def get_updater(optimizer: Optimizer) -> Updater:
    """The updater closure for `optimizer` (as `mxnet.optimizer.get_updater`)."""
    return Updater(optimizer)


def save_states(updater: Updater, path, dump_optimizer: bool = True) -> None:
    """`updater.save_states(path, dump_optimizer)`."""
    if not isinstance(updater, Updater):
        raise TypeError(f"save_states needs an optforge Updater, got {type(updater).__name__}")
    updater.save_states(path, dump_optimizer=dump_optimizer)


def load_states(path, *, allow_spec_change: bool = False) -> Updater:
    """A new Updater, optimizer included, from a file saved with dump_optimizer=True."""
    with open(path, "rb") as f:
        data = f.read()
    states, optimizer = loads_states(data, None, allow_spec_change=allow_spec_change)
    if optimizer is None:
        raise ValueError(f"{os.fspath(path)!r} holds states only (saved with dump_optimizer=False); "
                         "create the optimizer and use Updater(opt).load_states(path)")
    upd = Updater(optimizer)
    upd.states, upd.states_synced = states, dict.fromkeys(states, False)
    return upd


def write_atomic(path, data: bytes) -> None:
    """Write `data` to a temporary file next to `path`, fsync it, then os.replace it over `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# ---- JSON encoding of keys and values --------------------------------------------------------------------
class _Damaged(ValueError):
    pass


def _need(ok, what):
    if not ok:
        raise _Damaged(what)


def _key(k):
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer, str)):
        raise TypeError(f"index {k!r} must be an int or a str to be saved")
    return ["str", k] if isinstance(k, str) else ["int", int(k)]


def _unkey(pair):
    _need(isinstance(pair, list) and len(pair) == 2 and pair[0] in ("int", "str"), f"bad index entry {pair!r}")
    kind, value = pair
    ok = isinstance(value, str) if kind == "str" else isinstance(value, int) and not isinstance(value, bool)
    _need(ok, f"bad index entry {pair!r}")
    return value


def _enc(v):
    """A JSON value for a scalar, RNG state or global; numpy scalars keep their dtype."""
    if v is None or isinstance(v, (bool, str, int, float)):
        return v
    if isinstance(v, (np.generic, np.ndarray)):
        if v.dtype.kind not in "biuf":
            raise TypeError(f"cannot save a {v.dtype} value without pickle")
        return {"ndarray" if isinstance(v, np.ndarray) else "numpy": v.dtype.name, "value": v.tolist()}
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {"dict": {k: _enc(x) for k, x in v.items()}}
    if isinstance(v, (list, tuple)):
        return {"list": [_enc(x) for x in v]}
    raise TypeError(f"cannot save a {type(v).__name__} value without pickle")


def _dec(v):
    if v is None or isinstance(v, (bool, str, int, float)):
        return v
    _need(isinstance(v, dict), f"bad value {v!r}")
    if set(v) == {"dict"} and isinstance(v["dict"], dict):
        return {k: _dec(x) for k, x in v["dict"].items()}
    if set(v) == {"list"} and isinstance(v["list"], list):
        return [_dec(x) for x in v["list"]]
    for tag in ("numpy", "ndarray"):
        if set(v) == {tag, "value"}:
            _need(v[tag] in _NUMERIC, f"bad numeric dtype {v[tag]!r}")
            arr = np.array(v["value"], dtype=v[tag])
            return arr if tag == "ndarray" else arr[()]
    raise _Damaged(f"bad value {v!r}")


_NUMERIC = {np.dtype(t).name for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                       np.uint32, np.uint64, np.float16, np.float32, np.float64)}


def _num(v, what, optional=False):
    if v is None and optional:
        return None
    _need(isinstance(v, (int, float)) and not isinstance(v, bool), f"{what} must be a number, got {v!r}")
    return float(v)


def _int(v, what):
    _need(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 63,
          f"{what} must be an integer in [0, 2**63), got {v!r}")
    return v


def _value(v, what):
    """A scalar state or global: a number or a bool, as the spec's update computes them (an int within
    int64, so that every later update can use it)."""
    v = _dec(v)
    ok = isinstance(v, (bool, np.bool_)) or (isinstance(v, numbers.Real) and not isinstance(v, np.ndarray) and (
        not isinstance(v, numbers.Integral) or -2 ** 63 <= int(v) < 2 ** 63))
    _need(ok, f"{what} must be a number, got {v!r}")
    return v


def _pairs(v, what, value):
    _need(isinstance(v, list), f"{what} must be a list")
    out = {}
    for entry in v:
        _need(isinstance(entry, list) and len(entry) == 2, f"bad {what} entry {entry!r}")
        out[_unkey(entry[0])] = value(entry[1], f"{what} value")
    return out


# ---- the optimizer record ---------------------------------------------------------------------------------
class _Mults:
    """A saved param_dict entry: the lr_mult and wd_mult of a gluon Parameter."""
    __slots__ = ("lr_mult", "wd_mult")

    def __init__(self, lr_mult, wd_mult):
        self.lr_mult, self.wd_mult = lr_mult, wd_mult


def _registered_name(opt: Optimizer) -> str:
    table = registry.registered()
    names = [n.lower() for n in type(opt).__dict__.get("aliases", ())] + sorted(table)
    for name in names:
        if table.get(name) is type(opt):
            return name
    raise TypeError(f"{type(opt).__name__} is not registered, so a checkpoint could not rebuild it; "
                    "register it or save with dump_optimizer=False")


def optimizer_config(opt: Optimizer) -> dict:
    """Everything needed to rebuild `opt` mid-training, as JSON-able data."""
    sched = opt.lr_scheduler
    if sched is not None and not hasattr(sched, "get_config"):
        raise TypeError("the lr_scheduler has no get_config(); it cannot be saved without pickle")
    context = next(k for k, v in opt._all_index_update_counts.items() if v is opt._index_update_count)
    return {
        "name": _registered_name(opt), "spec_name": opt.spec_name, "spec_hash": opt.spec_hash,
        "hyper": {k: _enc(v) for k, v in opt.hyperparameters().items()},
        "base": {"rescale_grad": opt.rescale_grad, "wd": opt.wd, "clip_gradient": opt.clip_gradient,
                 "begin_num_update": opt.begin_num_update, "multi_precision": opt.multi_precision,
                 "max_grad_norm": opt.max_grad_norm, "skip_nonfinite": opt.skip_nonfinite,
                 "stochastic_rounding": opt.stochastic_rounding},
        "step_control": {"loss_scale": opt.loss_scale, "skipped_steps": opt.skipped_steps},
        "lr": opt.lr,
        "lr_scheduler": sched.get_config() if sched is not None else None,
        "idx2name": [[_key(k), v] for k, v in opt.idx2name.items()],
        "lr_mult": [[_key(k), v] for k, v in opt.lr_mult.items()],
        "wd_mult": [[_key(k), v] for k, v in opt.wd_mult.items()],
        "param_dict": [[_key(k), [float(p.lr_mult), float(p.wd_mult)]] for k, p in opt.param_dict.items()],
        "sym_info": list(opt.sym_info) if opt.sym_info else None,
        "counts": [[_key(dev), [[_key(k), v] for k, v in counts.items()]]
                   for dev, counts in opt._all_index_update_counts.items()],
        "context": _key(context),
        "num_update": opt.num_update,
        "globals": {k: _enc(v) for k, v in opt._globals.items()},
        "rng": _enc(opt._rng.bit_generator.state),
    }


def _spec_check(saved_hash, klass, allow_spec_change):
    if saved_hash == klass.spec_hash:
        return
    msg = (f"checkpoint was written by {klass.spec_name} spec {saved_hash!r}, the installed spec "
           f"({klass.spec_path}) is {klass.spec_hash!r}: the update rule may differ")
    if not allow_spec_change:
        raise ValueError(msg + "; pass allow_spec_change=True to load it anyway")
    warnings.warn(msg, UserWarning, stacklevel=4)


def _optimizer_class(cfg):
    _need(isinstance(cfg, dict), "optimizer record must be an object")
    klass = registry.registered().get(cfg["name"]) if isinstance(cfg.get("name"), str) else None
    if klass is None:
        raise ValueError(f"checkpoint optimizer {cfg.get('name')!r} is not registered")
    _need(klass.spec_name == cfg["spec_name"], f"{cfg['name']!r} is now {klass.spec_name}, not {cfg['spec_name']}")
    return klass


def optimizer_from_config(cfg: dict, allow_spec_change: bool = False) -> Optimizer:
    """Rebuild the optimizer optimizer_config() described; ValueError for a damaged record."""
    from . import lr_scheduler as lrs
    try:
        klass = _optimizer_class(cfg)
        _spec_check(cfg["spec_hash"], klass, allow_spec_change)
        sched = lrs.from_config(cfg["lr_scheduler"]) if cfg["lr_scheduler"] is not None else None
        base = cfg["base"]
        _need(isinstance(base, dict) and isinstance(cfg["hyper"], dict), "bad hyperparameters")
        lr = _num(cfg["lr"], "lr", optional=True)
        _need(lr is not None or sched is not None, "no learning rate and no scheduler")
        idx2name = _pairs(cfg["idx2name"], "idx2name", lambda v, w: v)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = klass(**{k: _dec(v) for k, v in cfg["hyper"].items()}, **base,
                        learning_rate=None if sched else lr, lr_scheduler=sched, param_idx2name=idx2name)
        opt.lr = lr
        control = cfg.get("step_control", {"loss_scale": 1.0, "skipped_steps": 0})   # (older checkpoints: none)
        _need(isinstance(control, dict), "bad step_control")
        opt.loss_scale = _num(control.get("loss_scale", 1.0), "loss_scale")
        _need(opt.loss_scale > 0, "loss_scale must be > 0")
        opt.skipped_steps = _int(control.get("skipped_steps", 0), "skipped_steps")
        opt.lr_mult = _pairs(cfg["lr_mult"], "lr_mult", _num)
        opt.wd_mult = _pairs(cfg["wd_mult"], "wd_mult", _num)
        pd = _pairs(cfg["param_dict"], "param_dict", lambda v, w: [_num(x, w) for x in v])
        opt.param_dict = {k: _Mults(*v) for k, v in pd.items()}
        sym = cfg["sym_info"]
        _need(sym is None or (isinstance(sym, list) and len(sym) == 2 and isinstance(sym[0], dict)
                              and isinstance(sym[1], list)), "bad sym_info")
        opt.sym_info = tuple(sym) if sym else ()
        counts = _pairs(cfg["counts"], "counts", lambda v, w: _pairs(v, w, _int))
        context = _unkey(cfg["context"])
        _need(context in counts, "the current context has no counters")
        opt._all_index_update_counts = counts
        opt._index_update_count = counts[context]
        opt.num_update = _int(cfg["num_update"], "num_update")
        _need(isinstance(cfg["globals"], dict), "bad globals")
        opt._globals = {k: _value(v, f"global {k!r}") for k, v in cfg["globals"].items()}
        _need(set(opt._globals) <= set(opt.global_names), f"unknown globals {sorted(set(opt._globals) - set(opt.global_names))}")
        rng = _dec(cfg["rng"])
        _need(isinstance(rng, dict) and rng.get("bit_generator") in _BIT_GENERATORS, "bad RNG state")
        bit_generator = getattr(np.random, rng["bit_generator"])()
        bit_generator.state = rng
        opt._rng = np.random.Generator(bit_generator)
    except _Damaged as e:
        raise ValueError(f"bad optimizer record in checkpoint: {e}") from None
    except (KeyError, TypeError, AttributeError, IndexError, OverflowError) as e:
        raise ValueError(f"bad optimizer record in checkpoint: {type(e).__name__}: {e}") from None
    return opt


# ---- the format -----------------------------------------------------------------------------------------
def dumps_states(states: dict, optimizer: Optimizer, dump_optimizer: bool = False) -> bytes:
    """The checkpoint bytes for `states` (index -> OptState) owned by `optimizer`."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"states are saved with their optimizer, got {type(optimizer).__name__}")
    header = {"format": FORMAT, "version": VERSION, "states": [],
              "owner": {"name": optimizer.spec_name, "spec_hash": optimizer.spec_hash},
              "optimizer": optimizer_config(optimizer) if dump_optimizer else None}
    arrays = {}
    for n, (k, s) in enumerate(states.items()):
        if not isinstance(s, OptState):
            raise TypeError(f"state {k!r} is not an optforge state")
        entry = {"index": _key(k), "owner": s.owner, "shape": list(s.shape), "dtype": s.dtype.name,
                 "tensors": list(s.tensors), "scalars": {a: _enc(b) for a, b in s.scalars.items()},
                 "master": s.master is not None}
        common = np.float32 if s.master is not None else s.dtype
        stored = {name: arr.dtype.name for name, arr in s.tensors.items() if arr.dtype != common}
        if stored:   # tensors declared `as bf16` (...): their own dtype
            entry["storage"] = stored
        if s.carry is not None:   # rows a `carry_rows` spec's lazy updates left pending
            entry["carry"] = True
            arrays[f"s{n}.__carry__"] = cuda.to_host(s.carry)
        header["states"].append(entry)
        for name, arr in s.tensors.items():
            arrays[f"s{n}.{name}"] = _stored(cuda.to_host(arr))   # GPU states are copied to the host explicitly
        if s.master is not None:
            arrays[f"s{n}.__master__"] = cuda.to_host(s.master)
    buf = io.BytesIO()
    blob = np.frombuffer(json.dumps(header, sort_keys=True, allow_nan=True).encode(), dtype=np.uint8)
    np.savez(buf, __header__=blob, **arrays)
    return buf.getvalue()


def _stored(arr: np.ndarray) -> np.ndarray:
    """An array as the checkpoint stores it: bfloat16 (which .npy cannot name) as its uint16 bits;
    the header's dtype says how to read them back (`_restored`)."""
    return arr.view(np.uint16) if arr.dtype == BFLOAT16 else arr


def _restored(arr: np.ndarray, dtype) -> np.ndarray:
    return arr.view(BFLOAT16) if dtype == BFLOAT16 and arr.dtype == np.uint16 else arr


def _read_npz(data: bytes) -> dict:
    """name -> ndarray of an uncompressed NPZ, read without pickle and with CRCs checked."""
    _need(data[:4] == b"PK\x03\x04", "not a zip archive (a pickle or another format?)")
    files = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            _need(info.filename.endswith(".npy") and info.filename[:-4] not in files,
                  f"unexpected member {info.filename!r}")
            _need(info.compress_type == zipfile.ZIP_STORED and info.file_size == info.compress_size
                  and info.file_size <= len(data), f"member {info.filename!r} is compressed")
            files[info.filename[:-4]] = _read_npy(zf.read(info), info.filename)  # zf.read checks the CRC
    return files


def _read_npy(raw: bytes, name: str) -> np.ndarray:
    """One .npy member, sized from its header before anything is allocated; never unpickles."""
    fp = io.BytesIO(raw)
    version = np.lib.format.read_magic(fp)
    _need(version in ((1, 0), (2, 0)), f"member {name!r} has .npy version {version}")
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(fp)
    _need(not dtype.hasobject and dtype.fields is None, f"member {name!r} holds {dtype} values")
    body = raw[fp.tell():]
    _need(len(body) == int(np.prod(shape, dtype=object)) * dtype.itemsize, f"member {name!r} has the wrong size")
    return np.frombuffer(body, dtype).reshape(shape, order="F" if fortran else "C").copy(order="C")


def loads_states(data: bytes, optimizer: Optimizer | None = None, allow_spec_change: bool = False):
    """(states, optimizer or None) from dumps_states bytes, checked against `optimizer` (the one
    the states will be used with) or against the optimizer the blob carries."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"states must be bytes from get_states(), got {type(data).__name__}")
    data = bytes(data)
    try:
        files = _read_npz(data)
        raw = files.pop("__header__", None)
        _need(raw is not None and raw.dtype == np.uint8 and raw.ndim == 1, "no header")
        header = json.loads(raw.tobytes().decode("utf-8"))
    except _Damaged as e:
        raise ValueError(f"not an optforge checkpoint (damaged or foreign): {e}") from None
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError, EOFError, UnicodeDecodeError...
        raise ValueError(f"not an optforge checkpoint (damaged or foreign): {type(e).__name__}: {e}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError("not an optforge checkpoint (its header has another format)")
    if header.get("version") != VERSION:
        raise ValueError(f"checkpoint format version {header.get('version')!r} is not supported "
                         f"(expected {VERSION})")
    cfg = header.get("optimizer")
    new_opt = optimizer_from_config(cfg, allow_spec_change) if cfg is not None else None
    target = new_opt or optimizer
    try:
        owner = header["owner"]
        _need(isinstance(owner, dict) and isinstance(owner.get("name"), str), "bad owner record")
        if target is not None:
            if owner["name"] != target.spec_name:
                raise ValueError(f"checkpoint states belong to a {owner['name']} optimizer, not {target.spec_name}")
            if new_opt is None:
                _spec_check(owner.get("spec_hash"), type(target), allow_spec_change)
        states = _states_from_header(header["states"], files, target)
    except _Damaged as e:
        raise ValueError(f"damaged checkpoint: {e}") from None
    except (KeyError, TypeError, AttributeError, IndexError, OverflowError) as e:
        raise ValueError(f"damaged checkpoint: {type(e).__name__}: {e}") from None
    return states, new_opt


def _states_from_header(entries, files, target):
    _need(isinstance(entries, list), "states must be a list")
    out, used = {}, set()
    for n, e in enumerate(entries):
        _need(isinstance(e, dict), f"state {n} must be an object")
        index = _unkey(e["index"])
        _need(index not in out, f"index {index!r} appears twice")
        shape, names, scalars = e["shape"], e["tensors"], e["scalars"]
        _need(isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape), f"bad shape {shape!r}")
        _need(e["dtype"] in {d.name for d in FLOAT_DTYPES}, f"bad dtype {e['dtype']!r}")
        _need(isinstance(names, list) and all(isinstance(x, str) for x in names), "bad tensor names")
        _need(isinstance(scalars, dict) and isinstance(e["master"], bool), "bad scalars or master flag")
        _need(isinstance(e["owner"], str), "bad owner")
        dtype = np.dtype(e["dtype"])
        if target is not None:
            _need(e["owner"] == target.spec_name, f"state {index!r} belongs to {e['owner']}")
            layout = target.state_layout(tuple(shape))
            problem = layout.mismatch(names, scalars, target.spec_name)
            if problem:
                raise ValueError(f"checkpoint state {index!r} {problem}")
        _need(not e["master"] or is_low(dtype), "a master copy belongs to a float16 or bfloat16 state")
        tensor_dtype = np.dtype(np.float32) if e["master"] else dtype
        storage = e.get("storage", {})
        _need(isinstance(storage, dict) and all(k in names and v in {d.name for d in FLOAT_DTYPES} | {"uint8"}
                                                for k, v in storage.items()), "bad storage record")
        members = [(name, f"s{n}.{name}") for name in names] + ([("__master__", f"s{n}.__master__")]
                                                                  if e["master"] else [])
        arrays = {}
        for name, member in members:
            _need(member in files, f"missing array {member!r}")
            arr = files[member]
            if name == "__master__":
                want = shape
            elif target is not None:
                want = list(layout.shape_of(name))
            else:   # no optimizer to ask: the weight's shape, or it with some axes reduced to 1
                want = [d if a == d else a for a, d in zip(arr.shape, shape) if a in (d, 1)] \
                    if arr.ndim == len(shape) else shape
            want_dtype = np.dtype(storage[name]) if name in storage else tensor_dtype
            if target is not None and name != "__master__":
                _need(want_dtype == target.tensor_dtype(name, tensor_dtype),
                      f"state {index!r} tensor {name!r} is stored as {want_dtype}, "
                      f"{target.spec_name} stores it as {target.tensor_dtype(name, tensor_dtype)}")
            arr = _restored(arr, want_dtype)
            _need(arr.dtype == want_dtype and list(arr.shape) == want,
                  f"array {member!r} is {arr.dtype}{list(arr.shape)}, header says {want_dtype}{want}")
            arrays[name] = arr
            used.add(member)
        master = arrays.pop("__master__", None)
        carry = None
        _need(e.get("carry", False) in (True, False), "bad carry flag")
        if e.get("carry", False):
            member = f"s{n}.__carry__"
            _need(member in files, f"missing array {member!r}")
            carry = files[member]
            _need(carry.dtype == np.int64 and carry.ndim == 1 and len(shape) >= 1, f"bad array {member!r}")
            _need(not carry.size or (int(carry.min()) >= 0 and int(carry.max()) < shape[0]
                                     and bool((carry[1:] > carry[:-1]).all())),
                  f"array {member!r} must hold sorted, unique rows of the weight")
            used.add(member)
        out[index] = OptState(e["owner"], shape, dtype, arrays,
                              {k: _value(v, f"state {index!r} scalar {k!r}") for k, v in scalars.items()}, master,
                              carry)
    _need(used == set(files), f"unexpected arrays {sorted(set(files) - used)}")
    return out
