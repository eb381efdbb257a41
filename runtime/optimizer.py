"""The Optimizer base class: MXNet 1.x semantics around generated kernels.

This file keeps MXNet's books (arguments, counters, learning rates, multipliers, precision, states);
validation of an update's arguments is runtime/validate.py, the choice of kernel and backend for
each parameter runtime/dispatch.py, states and their layout runtime/state.py. Nothing here computes
an update: every optimizer-specific line lives in a spec and its generated module.
"""
from __future__ import annotations

import difflib
import math
import numbers
import threading
import warnings
from typing import Any, NamedTuple

import numpy as np

from . import cuda, dispatch, native, ops, registry, validate
from .dtypes import BFLOAT16, by_name as dtype_by_name, is_low
from .sparse import RowSparse
from .state import OptState, StateLayout
from .validate import FLOAT_DTYPES, check_array as _check_array, check_index as _check_index, is_index as _is_index  # noqa: F401
from .validate import number as _number

BASE_ARGS = ("rescale_grad", "param_idx2name", "wd", "clip_gradient", "learning_rate", "lr_scheduler", "sym",
             "begin_num_update", "multi_precision", "param_dict", "max_grad_norm", "skip_nonfinite",
             "stochastic_rounding")


class HyperParam(NamedTuple):
    """A hyperparameter as its spec declares it."""
    name: str
    type: str                 # float | int | bool | choice
    default: Any
    optional: bool = False
    lo: float | None = None
    hi: float | None = None
    lo_closed: bool = True
    hi_closed: bool = True
    choices: tuple = ()
    doc: str = ""

    def range_text(self) -> str:
        lo = "-inf" if self.lo == -math.inf else repr(self.lo)
        hi = "inf" if self.hi == math.inf else repr(self.hi)
        return f"{'[' if self.lo_closed else '('}{lo}, {hi}{']' if self.hi_closed else ')'}"

    def check(self, value):
        """The value converted to the declared type; ValueError/TypeError naming the argument otherwise."""
        if value is None:
            if self.optional:
                return None
            raise TypeError(f"{self.name} must be a {self.type}, got None")
        if self.type == "bool":
            if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral) and value in (0, 1)):
                return bool(value)
            raise TypeError(f"{self.name} must be a bool, got {value!r}")
        if self.type == "choice":
            if not isinstance(value, str) or value not in self.choices:
                hint = difflib.get_close_matches(str(value), self.choices, n=1)
                raise ValueError(f"Invalid {self.name} value: {value!r} (must be one of "
                                 f"{', '.join(map(repr, self.choices))})" + (f"; did you mean {hint[0]!r}?" if hint else ""))
            return value
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{self.name} must be a {'number' if self.type == 'float' else 'integer'}, got {value!r}")
        if self.type == "int":
            if not float(value).is_integer():
                raise TypeError(f"{self.name} must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
            if math.isnan(value):
                raise ValueError(f"Invalid {self.name} value: nan")
        if self.lo is not None:
            below = value < self.lo or (value == self.lo and not self.lo_closed)
            above = value > self.hi or (value == self.hi and not self.hi_closed)
            if below or above:
                raise ValueError(f"Invalid {self.name} value: {value!r} (must be in {self.range_text()})")
        return value


class Step(NamedTuple):
    """What one parameter's update reads besides its arrays; the generated kernels take it whole
    (`_kernel_numpy(step, weight, grad, tensors, scalars)`) and bind the fields their spec uses."""
    call: dict            # the values `_prologue` computed once for this update call
    lr: float             # this parameter's learning rate (schedule and lr_mult applied)
    wd: float             # its weight decay (wd_mult applied)
    t: int                # how many times it has been updated, this update included
    param_name: str       # its name (param_idx2name), or its index as text
    learning_rate: float  # the call's learning rate, before multipliers
    num_update: int       # the optimizer's update count
    grad_scale: float = 1.0   # every gradient of the call is read times this (step control, see grad_scale)
    round_seed: float = 0.0   # a bfloat16 weight's stochastic rounding seed (0: to nearest even)


class _Call(NamedTuple):
    """An update call validated and counted, ready to run (Optimizer._prepare)."""
    indices: list
    weights: list
    grads: list
    states: list
    steps: list
    backend: str
    saved: tuple
    saved_globals: dict
    saved_rng: dict = None    # the random generator's state before the call drew rounding seeds


def update_together(parts, scale=None) -> None:
    """Update several optimizers of one spec as ONE update call: `parts` are (optimizer, indices,
    weights, grads, states). For a spec with optimizer-wide reductions (`global_sum`, ...) every
    parameter of every part meets the others, and each optimizer's once-per-call statements run once
    with the values combined over all of them: optforge.torch's param groups (one optimizer each)
    share Prodigy's d as prodigyopt's groups do. Nothing is counted unless every part validates; a
    failure uncounts every part."""
    owners = []
    try:
        for opt, *_ in parts:
            if opt in owners:
                raise ValueError("update_together: an optimizer appears in two parts")
            if not opt._updating.acquire(blocking=False):
                raise RuntimeError(f"this {type(opt).__name__} is being updated from another thread")
            owners.append(opt)
        prepared = []
        try:
            for opt, index, weight, grad, state in parts:
                call = opt._prepare(index, weight, grad, state, scale)
                if call not in (True, False):
                    prepared.append((opt, call))
            dispatch.run_meeting_calls([(opt, c.weights, c.grads, c.states, c.steps, c.backend) for opt, c in prepared])
        except BaseException:
            for opt, c in prepared:
                opt._uncount(c.saved, c.saved_globals, ())
                if c.saved_rng is not None:
                    opt._rng.bit_generator.state = c.saved_rng
            raise
    finally:
        for opt in owners:
            opt._updating.release()


def grad_scale(grads, max_grad_norm=None, skip_nonfinite=False, loss_scale=1.0, opt=None):
    """Step control for one update call: the factor every gradient is multiplied by as the kernels
    read it, or None when the step is to be skipped. Without clipping and skipping it is
    1 / loss_scale and nothing is read. Otherwise one read of every gradient (a row-sparse one: its
    rows) gives their global L2 norm (ops.sum_squares_list: float64 sums of float32 blocks; one native
    call for the NumPy gradients when `opt`, the optimizer, is on the native backend; one launch per
    device for CuPy ones; passed through the reduce hook once for the call, so slice-sharded
    processes agree): with `skip_nonfinite`, an inf or NaN in any
    gradient (a non-finite norm) skips the step; with `max_grad_norm`, the gradients are scaled by
    min(1, max_grad_norm / (norm + 1e-6)), torch.nn.utils.clip_grad_norm_'s coefficient, of the
    norm after loss unscaling."""
    inv = 1.0 / loss_scale
    if max_grad_norm is None and not skip_nonfinite:
        return inv
    arrays = [g.data if isinstance(g, RowSparse) else g for g in grads]
    lib = opt._norm_library() if opt is not None and any(type(a) is np.ndarray for a in arrays) else None
    total = ops.sum_squares_list(arrays, lib)
    norm = math.sqrt(ops._reduced(total)) * inv
    if skip_nonfinite and not math.isfinite(norm):
        return None
    if max_grad_norm is None:
        return inv
    return inv * min(1.0, max_grad_norm / (norm + 1e-6))


class Optimizer:
    """Base class of every optimizer. Arguments as in MXNet 1.x's `mxnet.optimizer.Optimizer`:

    rescale_grad : float, multiply each gradient by it first (often 1/batch_size).
    param_idx2name : dict int -> str, names used by lr/wd multipliers (and by some optimizers).
    wd : float, weight decay (L2 penalty) coefficient.
    clip_gradient : float or None, clip gradients to [-clip_gradient, clip_gradient]; None, 0 or
        a negative value turns clipping off.
    learning_rate : float or None, the initial learning rate; overwrites the scheduler's base_lr
        when both are given; 0.01 when neither is.
    lr_scheduler : an `optforge.lr_scheduler.LRScheduler`, called with `num_update`.
    sym : optional object with attr_dict() and list_arguments() carrying __lr_mult__/__wd_mult__.
    begin_num_update : int, the update count to start from.
    multi_precision : bool, keep a float32 master copy of float16 weights and update that.
    param_dict : dict index -> object with `lr_mult` and `wd_mult` attributes (gluon Parameters).

    Step control, for every spec (not MXNet's; see `grad_scale`):
    max_grad_norm : float or None, clip the gradients of each update call to this global L2 norm
        (torch.nn.utils.clip_grad_norm_ over the call's parameters), in the kernels' reads.
    skip_nonfinite : bool, skip the whole call (weights, states and counters untouched) when any of
        its gradients holds inf or NaN; `skipped_steps` counts the calls skipped.
    `loss_scale` (an attribute, 1.0): the gradients are divided by it (a mixed-precision loss scale;
        the torch adapter sets it from torch.amp.GradScaler).

    Storage (not MXNet's):
    stochastic_rounding : bool, store bfloat16 weights that have no float32 master copy rounded
        stochastically (up with probability equal to the distance from the value below, so that
        updates smaller than the weight's rounding gap still move it on average) instead of to
        nearest even; seeded from the optimizer's random generator (checkpointed), the same bits
        on every backend. float16 weights need `multi_precision` instead.
    """
    spec_name = "Optimizer"
    spec_path = None
    spec_hash = None
    hyperparams: tuple = ()
    base_defaults: dict = {}
    tensor_states: tuple = ()
    state_storage: dict = {}     # `state m = zeros as bf16`: tensor state -> its storage dtype's name
    state_quant: dict = {}       # `state m = zeros as int8(256)`: tensor state -> its 8-bit format
    chunked: bool = False        # large 16-bit arrays may enter the chunked NumPy kernel as they are (runtime/chunks.py)
    host_reads_grad: bool = False   # the compiled backends' driver reads the gradient on the host
    scalar_states: tuple = ()
    global_names: tuple = ()
    options: dict = {}
    sparse = None
    multi_tensor = False
    kernel_stages: tuple = ()    # the stage kernels of the compiled backends, in program order

    def __init__(self, rescale_grad=1.0, param_idx2name=None, wd=0.0, clip_gradient=None, learning_rate=None,
                 lr_scheduler=None, sym=None, begin_num_update=0, multi_precision=False, param_dict=None,
                 max_grad_norm=None, skip_nonfinite=False, stochastic_rounding=False, **kwargs):
        # every argument is checked before anything (the scheduler included) is touched
        if kwargs:
            self._reject_kwargs(kwargs)
        if max_grad_norm is not None:
            _number("max_grad_norm", max_grad_norm, finite=True)
            if not max_grad_norm > 0:
                raise ValueError(f"max_grad_norm must be > 0 (or None: no clipping), got {max_grad_norm!r}")
        if not isinstance(skip_nonfinite, (bool, np.bool_)):
            raise TypeError(f"skip_nonfinite must be a bool, got {skip_nonfinite!r}")
        if not isinstance(stochastic_rounding, (bool, np.bool_)):
            raise TypeError(f"stochastic_rounding must be a bool, got {stochastic_rounding!r}")
        _number("rescale_grad", rescale_grad, finite=True)
        _number("wd", wd, finite=True)
        if clip_gradient is not None:
            _number("clip_gradient", clip_gradient)
        if learning_rate is not None:
            _number("learning_rate", learning_rate, finite=True)
        if lr_scheduler is not None and not (callable(lr_scheduler) and hasattr(lr_scheduler, "base_lr")):
            raise TypeError(f"lr_scheduler must be an LRScheduler (callable with a base_lr), got {lr_scheduler!r}")
        if param_idx2name is not None and not isinstance(param_idx2name, dict):
            raise TypeError("param_idx2name should be a dict of param indexes to names.")
        for k, v in (param_idx2name or {}).items():
            if not _is_index(k):
                raise TypeError(f"param_idx2name: key {k!r} must be a parameter index (int or str)")
            if not isinstance(v, str):
                raise TypeError(f"param_idx2name[{k!r}] must be a str (the parameter's name), got {v!r}")
        if not isinstance(begin_num_update, numbers.Integral) or isinstance(begin_num_update, bool) or begin_num_update < 0:
            raise ValueError(f"Invalid begin_num_update value: {begin_num_update!r} (must be an integer >= 0)")
        if not (isinstance(multi_precision, (bool, np.bool_)) or multi_precision in (0, 1)):
            raise TypeError(f"multi_precision must be a bool, got {multi_precision!r}")
        if param_dict is not None and not isinstance(param_dict, dict):
            raise TypeError("param_dict must be a dict of index -> Parameter")
        for k, p in (param_dict or {}).items():
            for attr in ("lr_mult", "wd_mult"):
                _number(f"param_dict[{k!r}].{attr}", getattr(p, attr, None))
        if sym is not None and not (hasattr(sym, "attr_dict") and hasattr(sym, "list_arguments")):
            raise TypeError("sym must provide attr_dict() and list_arguments() (an MXNet Symbol)")

        self.rescale_grad = float(rescale_grad)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.skip_nonfinite = bool(skip_nonfinite)
        self.stochastic_rounding = bool(stochastic_rounding)
        self.loss_scale = 1.0
        self.skipped_steps = 0
        self.lr_scheduler = lr_scheduler
        keep_base = self.options.get("keep_scheduler_base_lr", False)
        if lr_scheduler is None and learning_rate is None:
            learning_rate = 0.01
        if lr_scheduler is not None and learning_rate is not None and not keep_base:
            if lr_scheduler.base_lr != learning_rate:
                warnings.warn("learning rate from ``lr_scheduler`` has been overwritten by ``learning_rate`` "
                              "in optimizer.", UserWarning, stacklevel=3)
                lr_scheduler.base_lr = learning_rate
        self.lr = None if learning_rate is None else float(learning_rate)
        self.wd = float(wd)
        self.clip_gradient = None if clip_gradient is None else float(clip_gradient)
        self.begin_num_update = int(begin_num_update)
        self.num_update = int(begin_num_update)
        self._all_index_update_counts = {0: {}}
        self._index_update_count = self._all_index_update_counts[0]
        self.multi_precision = bool(multi_precision)
        self.idx2name = dict(param_idx2name or {})
        self.sym_info = (sym.attr_dict(), sym.list_arguments()) if sym is not None else ()
        self.param_dict = param_dict if param_dict else {}
        self.aggregate_num = int(self.options.get("aggregate", 0))
        self._globals: dict = {}
        self._rng = np.random.default_rng()
        self.lr_mult: dict = {}
        self.wd_mult: dict = {}
        self._updating = threading.Lock()   # held by the update in progress (see _update)
        self.set_lr_mult({})
        self.set_wd_mult({})

    # ---- construction helpers used by generated subclasses ------------------------------------------
    @classmethod
    def _check_hypers(cls, values: dict) -> dict:
        by_name = {h.name: h for h in cls.hyperparams}
        return {name: by_name[name].check(v) for name, v in values.items()}

    def _set_hypers(self, values: dict) -> None:
        for name, v in values.items():
            setattr(self, name, v)
        if "seed" in values:  # specs that draw random numbers are seedable
            self._rng = np.random.default_rng(values["seed"])

    def _reject_kwargs(self, kwargs):
        valid = list(BASE_ARGS) + [h.name for h in self.hyperparams]
        name = sorted(kwargs)[0]
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"{type(self).__name__} got an unexpected keyword argument {name!r}{hint}")

    @staticmethod
    def register(klass):
        return registry.register(klass)

    @staticmethod
    def create_optimizer(name, **kwargs):
        return registry.create(name, **kwargs)

    def hyperparameters(self) -> dict:
        """This optimizer's own hyperparameters and their current values."""
        return {h.name: getattr(self, h.name) for h in self.hyperparams}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args}{', ' if args else ''}learning_rate={self.learning_rate!r}, wd={self.wd!r})"

    # ---- learning rate and multipliers (MXNet semantics) -------------------------------------------
    @property
    def learning_rate(self) -> float:
        if self.lr_scheduler is not None:
            return self.lr_scheduler(self.num_update)
        return self.lr

    @learning_rate.setter
    def learning_rate(self, lr):
        self.set_learning_rate(lr)

    def set_learning_rate(self, lr):
        if self.lr_scheduler is not None:
            raise UserWarning("LRScheduler of the optimizer has already been defined. Note that "
                              "set_learning_rate can mutate the value of the learning rate of the optimizer "
                              "only when the LRScheduler of the optimizer is undefined.")
        _number("learning_rate", lr)
        self.lr = float(lr)

    def set_lr_scale(self, args_lrscale):  # pragma: no cover - kept for API parity
        raise DeprecationWarning("set_lr_scale is deprecated; use set_lr_mult")

    def set_lr_mult(self, args_lr_mult):
        """Learning-rate multipliers by parameter index or name."""
        mult = self._check_mults("args_lr_mult", args_lr_mult)
        self.lr_mult = {}
        if self.sym_info:
            attr, arg_names = self.sym_info
            for name in arg_names:
                if name in attr and "__lr_mult__" in attr[name]:
                    self.lr_mult[name] = float(attr[name]["__lr_mult__"])
        self.lr_mult.update(mult)

    def set_wd_mult(self, args_wd_mult):
        """Weight-decay multipliers by parameter index or name. With param_idx2name, names that do not
        end in one of the spec's decay suffixes (default `_weight`, `_gamma`) get multiplier 0."""
        mult = self._check_mults("args_wd_mult", args_wd_mult)
        suffixes = tuple(self.options.get("decay_suffixes", ("_weight", "_gamma")))
        self.wd_mult = {}
        for n in self.idx2name.values():
            if not n.endswith(suffixes):
                self.wd_mult[n] = 0.0
        if self.sym_info:
            attr, arg_names = self.sym_info
            for name in arg_names:
                if name in attr and "__wd_mult__" in attr[name]:
                    self.wd_mult[name] = float(attr[name]["__wd_mult__"])
        self.wd_mult.update(mult)

    @staticmethod
    def _check_mults(what, mults) -> dict:
        if not isinstance(mults, dict):
            raise TypeError(f"{what} must be a dict of index or name -> float")
        out = {}
        for k, v in mults.items():
            if not _is_index(k):
                raise TypeError(f"{what}: key {k!r} must be a parameter index (int) or name (str)")
            _number(f"{what}[{k!r}]", v, finite=True)
            out[k] = float(v)
        return out

    def _set_current_context(self, device_id):
        if device_id not in self._all_index_update_counts:
            self._all_index_update_counts[device_id] = {}
        self._index_update_count = self._all_index_update_counts[device_id]

    def _update_count(self, index):
        for idx in index if isinstance(index, (list, tuple)) else [index]:
            if idx not in self._index_update_count:
                self._index_update_count[idx] = self.begin_num_update
            self._index_update_count[idx] += 1
            self.num_update = max(self._index_update_count[idx], self.num_update)

    def _mult(self, index, table, attr) -> float:
        if index in self.param_dict:
            return float(getattr(self.param_dict[index], attr))
        if index in table:
            return table[index]
        if index in self.idx2name:
            return table.get(self.idx2name[index], 1.0)
        return 1.0

    def _get_lrs(self, indices):
        lr = self.learning_rate
        return [lr * self._mult(i, self.lr_mult, "lr_mult") for i in indices]

    def _get_lr(self, index):
        return self._get_lrs([index])[0]

    def _get_wds(self, indices):
        return [self.wd * self._mult(i, self.wd_mult, "wd_mult") for i in indices]

    def _get_wd(self, index):
        return self._get_wds([index])[0]

    # ---- states -------------------------------------------------------------------------------------
    def create_state(self, index, weight):
        """The state of one parameter: the spec's tensors (in the weight's dtype) and scalars."""
        _check_index(index, "index")
        _check_array(weight, "weight")
        xp = ops._xp(weight)   # numpy, or cupy for CuPy arrays
        tensors = {}
        for name, init, fill, shape in self._tensor_layout(weight.shape, index):
            dtype = self.tensor_dtype(name, weight.dtype)
            if init == "absmax":   # (made with its codes, below)
                continue
            if name in self.state_quant:   # 8-bit: the start's codes and block scales
                q = self.state_quant[name]
                start = xp.zeros(shape, np.float32) if init == "zeros" else \
                    xp.array(weight, dtype=np.float32) if init == "weight" else xp.full(shape, fill, np.float32)
                tensors[name], tensors[name + ".absmax"] = ops.quantize(start, q)
                continue
            if init == "zeros":
                tensors[name] = xp.zeros(shape, dtype=dtype)
            elif init == "weight":
                tensors[name] = xp.array(weight, dtype=dtype, copy=True, order="C")
            elif init == "eye":
                tensors[name] = ops.eye(shape, fill, dtype, xp)
            else:
                tensors[name] = xp.full(shape, fill, dtype=dtype)
        return OptState(self.spec_name, weight.shape, weight.dtype, tensors, self._scalar_init(index))

    def tensor_dtype(self, name, dtype):
        """The dtype tensor state `name` is stored in for a state of `dtype` (the weight's; float32
        with a master copy): its declared storage (`as bf16`), uint8 codes and float32 block scales
        (`name.absmax`) for an 8-bit state, else `dtype`."""
        if name in self.state_quant:
            return np.dtype(np.uint8)
        if name.endswith(".absmax") and name[:-7] in self.state_quant:
            return np.dtype(np.float32)
        storage = self.state_storage.get(name)
        return np.dtype(dtype) if storage is None else dtype_by_name(storage)

    def _tensor_layout(self, shape=None, index=None):
        """`_state_layout` with each 8-bit state's block scales after its codes: (name.absmax,
        "absmax", 0, (blocks,))."""
        out = []
        for name, init, fill, arr_shape in self._state_layout(shape, index):
            out.append((name, init, fill, arr_shape))
            q = self.state_quant.get(name)
            if q is not None:
                n = None if arr_shape is None else math.prod(arr_shape)
                out.append((name + ".absmax", "absmax", 0.0, None if n is None else (-(-n // q["block"]),)))
        return out

    def create_state_multi_precision(self, index, weight):
        """As create_state; with multi_precision and a float16 or bfloat16 weight, the state also holds
        a float32 master copy of the weight, and every tensor state is float32."""
        _check_array(weight, "weight")
        if self.multi_precision and is_low(weight.dtype):
            master = weight.astype(np.float32)
            state = self.create_state(index, master)
            state.master = master
            state.dtype = np.dtype(weight.dtype)
            return state
        if weight.dtype == np.float16 and not self.multi_precision:
            warnings.warn("Accumulating with float16 in optimizer can lead to poor accuracy or slow convergence. "
                          "Consider using multi_precision=True option of the optimizer", UserWarning, stacklevel=2)
        return self.create_state(index, weight)

    # ---- updates --------------------------------------------------------------------------------------
    def update(self, index, weight, grad, state):
        """Update `weight` in place from `grad`. `index`, `weight`, `grad`, `state` may be equal-length
        lists to update several parameters in one call (each index counted once)."""
        self._update(index, weight, grad, state)

    def update_multi_precision(self, index, weight, grad, state):
        """As update; a state made by create_state_multi_precision carries the float32 master copy."""
        self._update(index, weight, grad, state)

    def _update(self, index, weight, grad, state, scale=None):
        # one update at a time: an optimizer's updates share scratch arrays (and its counters)
        if not self._updating.acquire(blocking=False):
            raise RuntimeError(f"this {type(self).__name__} is being updated from another thread; an optimizer's "
                               "updates share its scratch memory and counters: give each thread its own "
                               "optimizer, or serialise the calls")
        try:
            return self._update_one_call(index, weight, grad, state, scale)
        finally:
            self._updating.release()

    def _update_one_call(self, index, weight, grad, state, scale=None):
        """One update call; `scale` (the gradients' factor) when the caller did the step control (the
        torch adapter, over all its param groups). Returns False when step control skipped it."""
        call = self._prepare(index, weight, grad, state, scale)
        if call in (True, False):
            return call
        done: list = []   # positions of the parameters whose update completed
        try:
            dispatch.run(self, call.weights, call.grads, call.states, call.steps, call.backend, done)
        except BaseException:
            # count only what was updated: a parameter whose update did not complete is not counted (one
            # that failed part way may be partly written: see SECURITY.md)
            self._uncount(call.saved, call.saved_globals, {call.indices[k] for k in done})
            if not done and call.saved_rng is not None:
                self._rng.bit_generator.state = call.saved_rng
            raise
        return True

    def _prepare(self, index, weight, grad, state, scale=None):
        """Validate, run step control, count and compute every parameter's Step: the `_Call` to run,
        or True (nothing to update) or False (step control skipped it; nothing counted)."""
        indices, weights, grads, states = self._gather(index, weight, grad, state)
        if not indices:
            return True
        self._check_sparse_requires(indices, grads, states)
        if self.stochastic_rounding:
            for k, (w, s) in enumerate(zip(weights, states)):
                if w.dtype == np.float16 and s.master is None:
                    raise TypeError(f"stochastic_rounding rounds bfloat16 weights; weight{f'[{k}]' if len(weights) > 1 else ''} "
                                    "is float16: keep a float32 master copy instead (multi_precision=True and "
                                    "create_state_multi_precision)")
        if not (isinstance(self.loss_scale, numbers.Real) and math.isfinite(self.loss_scale) and self.loss_scale > 0):
            raise ValueError(f"loss_scale must be a finite number > 0, got {self.loss_scale!r}")
        if scale is None:
            # step control reads the gradients before anything is counted or written
            scale = grad_scale(grads, self.max_grad_norm, self.skip_nonfinite, self.loss_scale, self)
            if scale is None:
                self.skipped_steps += 1
                return False
        # the backend and its kernels are ready before anything is counted: a library that cannot be
        # built or loaded raises here, with the counters untouched
        backend = self.backend
        if any(cuda.is_cupy(w) for w in weights):
            cuda.module_for(type(self), weights[0].device.id)
        elif backend == "native":
            native.library_for(type(self))
            if any(is_low(w.dtype) and s.master is None for w, s in zip(weights, states)):
                native.library_for(type(self), low=True)
        # counting comes after validation; if the schedule or a multiplier then fails, undo it
        saved = [(i, self._index_update_count.get(i)) for i in indices], self.num_update
        saved_globals = dict(self._globals)
        try:
            if self.options.get("never_count", False):
                # updates are not counted: num_update stays at begin_num_update (MXNet's Test)
                bases = [self.learning_rate] * len(indices)
                wds = self._get_wds(indices)
            elif self.options.get("lr_before_count", False):
                # read the learning rate and weight decay before counting this update (LBSGD)
                bases, wds = [], []
                for i in indices:
                    bases.append(self.learning_rate)
                    wds.append(self._get_wd(i))
                    self._update_count(i)
            elif self.options.get("count_each", False):
                # count each index, then read its learning rate, one index after another (LAMB)
                bases, wds = [], []
                for i in indices:
                    self._update_count(i)
                    bases.append(self.learning_rate)
                    wds.append(self._get_wd(i))
            else:
                self._update_count(indices)
                bases = [self.learning_rate] * len(indices)
                wds = self._get_wds(indices)
            for b in bases:
                if isinstance(b, (bool, np.bool_)) or not isinstance(b, numbers.Real):
                    raise TypeError(f"lr_scheduler returned {b!r} for num_update={self.num_update}; "
                                    "expected a number")
            lrs = [b * self._mult(i, self.lr_mult, "lr_mult") for i, b in zip(indices, bases)]
            num_update = self.num_update
            call = self._prologue(bases[0], num_update)
        except BaseException:
            self._uncount(saved, saved_globals, ())
            raise
        steps = [Step(call, lr, wd, self._index_update_count.get(i, self.begin_num_update), self.idx2name.get(i, str(i)),
                      base, num_update, float(scale))
                 for i, lr, wd, base in zip(indices, lrs, wds, bases)]
        saved_rng = None
        if self.stochastic_rounding:
            # one seed per bfloat16 weight without a master copy, in the call's order
            saved_rng = self._rng.bit_generator.state
            steps = [st._replace(round_seed=float(self._rng.integers(1, 1 << 53)))
                     if w.dtype == BFLOAT16 and s.master is None else st
                     for st, w, s in zip(steps, weights, states)]
        return _Call(indices, weights, grads, states, steps, backend, saved, saved_globals, saved_rng)

    def _uncount(self, saved, saved_globals, completed):
        """Undo the counting of an update call for every index not in `completed`; with none
        completed, the once-per-call statements' changes to the globals too."""
        for i, n in saved[0]:
            if i in completed:
                continue
            if n is None:
                self._index_update_count.pop(i, None)
            else:
                self._index_update_count[i] = n
        self.num_update = max([saved[1]] + [self._index_update_count.get(i, self.begin_num_update) for i in completed])
        if not completed:
            self._globals.clear()
            self._globals.update(saved_globals)

    @property
    def backend(self) -> str:
        """The backend NumPy arrays use: 'native' (compiled C++, when a compiler works) or 'numpy'.
        Set it to choose; the default follows OPTFORGE_BACKEND (auto)."""
        choice = getattr(self, "_backend", None) or native.backend_choice()
        if choice == "auto":
            choice = "native" if hasattr(self, "_kernel_staged") and native.usable(type(self)) else "numpy"
        return choice

    @backend.setter
    def backend(self, value):
        if value not in ("auto", "numpy", "native"):
            raise ValueError(f"backend must be 'auto', 'numpy' or 'native', got {value!r}")
        if value == "native" and not native.available():
            raise ValueError("backend 'native' needs a C++ compiler (set OPTFORGE_CXX)")
        self._backend = value

    def _norm_library(self):
        """The native library whose one call sums step control's gradient norm over the NumPy
        gradients (native.sum_squares_list), or None: the NumPy backend's sweep."""
        if self.backend != "native" or not hasattr(self, "_kernel_staged"):
            return None
        return native.library_for(type(self))

    # ---- row-sparse gradients (runtime/sparse.py) ------------------------------------------------------
    def _lazy_rows(self, state) -> bool:
        """Whether a row-sparse gradient for this parameter takes the lazy row kernel (the spec's
        `sparse lazy [if cond]`); otherwise it is densified and runs the standard update."""
        return self.sparse == "lazy" and self._sparse_lazy(master_copy=state.master is not None)

    def _check_sparse_requires(self, indices, grads, states):
        """The spec's `sparse lazy requires ...` clause, checked before anything is counted or touched."""
        check = getattr(self, "_sparse_requires", None)
        if check is None:
            return
        for k, (i, g, s) in enumerate(zip(indices, grads, states)):
            if isinstance(g, RowSparse) and self._lazy_rows(s):
                message = check(self._get_wd(i), master_copy=s.master is not None)
                if message is not None:
                    where = f" (grad[{k}])" if len(indices) > 1 else ""
                    raise ValueError(message + where)

    def _gather(self, index, weight, grad, state):
        """Normalise to lists and validate everything before anything is touched (runtime/validate.py)."""
        return validate.gather(self, index, weight, grad, state)

    # ---- generated subclasses fill these in ------------------------------------------------------------
    def _state_layout(self, shape=None, index=None):
        return []

    def state_layout(self, shape=None) -> StateLayout:
        """The state this configuration keeps for a parameter of `shape`: tensor names (spec order),
        scalar names and, with `shape`, each tensor's array shape. A spec whose states depend on the
        weight's shape (`state v = zeros if ndim(weight) < 2`) needs `shape`."""
        layout = self._tensor_layout(None if shape is None else tuple(shape))
        return StateLayout(tuple(e[0] for e in layout), tuple(sorted(self._scalar_init())),
                           tuple(e[3] for e in layout) if shape is not None else ())

    def _scalar_init(self, index=None):
        return {}

    def _start_rates(self, index):
        """`lr`, `wd` and `learning_rate` for the states of parameter `index` created now (a spec's
        `state acc = initial_accumulator_value`, `state step = lr`); without an index, the
        optimizer's own."""
        if index is None:
            return self.learning_rate, self.wd, self.learning_rate
        return self._get_lr(index), self._get_wd(index), self.learning_rate

    def _prologue(self, learning_rate, num_update):
        return {}

    def _kernel_numpy(self, step, weight, grad, tensors, scalars):
        raise NotImplementedError(f"{type(self).__name__} has no update rule; write a spec for it")


