"""optforge.torch: any spec optimizer as a real `torch.optim.Optimizer` (the extra `optforge[torch]`).

    >>> import torch, optforge.torch
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = optforge.torch.Optimizer(model.parameters(), "lamb", lr=1e-3, weight_decay=0.01)
    >>> model(torch.ones(3, 4)).sum().backward()
    >>> opt.step(); opt.zero_grad()

A training loop switches by changing the line that builds its optimizer; LR schedulers, closures,
step hooks, `zero_grad`, `state_dict` / `load_state_dict` and `add_param_group` work as with any
torch optimizer. Importing `optforge` never imports torch; this module does.

Design
------
* **One optforge optimizer per param group.** A group is a dict of `lr`, `weight_decay`, the spec's
  hyperparameters (`beta1`, `momentum`, ...) and `rescale_grad`, `clip_gradient`, `multi_precision`;
  missing keys come from the constructor's arguments, as in torch. Before every step each group's
  values are copied into its optforge optimizer (learning_rate = `lr`, wd = `weight_decay`, lr/wd
  multipliers 1), so a scheduler that changes `group['lr']`, or code that edits a hyperparameter,
  takes effect at the next step. Counters (`t`, `num_update`), globals (LARS's last learning rate,
  read once per update call) and the random generator (SGLD) are per group; a step is one update
  call over every group, so optimizer-wide reductions (`global_sum`: Prodigy's d) combine all of
  them, and each group's once-per-call statements see the same combined values. Weight decay applies
  to every parameter of its group, as torch does (MXNet's `_weight`/`_gamma` name rule is off);
  put biases and norms in a group with `weight_decay=0`. Parameter names given with
  `model.named_parameters()` reach the kernels as `param_name` (LARS's `bias` rule).
* **Zero copies.** A step hands the generated kernels views of the tensors' own memory: on CPU
  `tensor.detach().numpy()`, on CUDA `cupy.from_dlpack(tensor)` (on torch's current stream), and
  each group is one list update. State tensors are torch tensors (`opt.state[p]['mean']`) that the
  kernels update in place through the same kind of view.
* **Sparse gradients** (`nn.Embedding(sparse=True)`) are coalesced and passed as
  `optforge.RowSparse`; specs that declare `sparse lazy` update only the rows the batch touched.
* **Checkpoints.** `state_dict()` holds the state tensors under their spec names (the float32
  master copy of a float16 parameter with `multi_precision` as `master_copy`), per-parameter
  scalars as plain data, and under the key `optforge` the spec, its hash, counters, globals and RNG
  state as plain data: `torch.save` / `torch.load(weights_only=True)` round trips and training
  resumes bit-exactly. Loaded tensors keep their dtype (torch's loader would cast float32 master
  copies to float16) and are copied, so the loaded optimizer shares nothing with the dict.
* **Sharded parameters.** `reduce_hook` (e.g. `all_reduce_hook()`) is applied to every whole-tensor
  reduction of the spec (`norm`, `sum`) while a step runs (`optforge.ops.reduce_hook`), so that when
  each process owns a slice of every parameter (ZeRO-1), LAMB's and LARS's norms are those of the
  whole tensors. See README.md, "PyTorch".
"""
from __future__ import annotations

import contextlib
import difflib
import inspect
import warnings

import numpy as np
import torch

from . import ops, registry
from .dtypes import BFLOAT16
from .optimizer import Optimizer as SpecOptimizer
from .optimizer import grad_scale, update_together
from .optimizer import OptState
from .validate import number as _number
from .sparse import RowSparse
from .updater import _Damaged, _dec, _enc, _int, _value

__all__ = ["Optimizer", "all_reduce_hook", "dropin"]

FORMAT = "optforge-torch"
VERSION = 1
MASTER = "master_copy"
BASE_KEYS = ("rescale_grad", "clip_gradient", "multi_precision", "stochastic_rounding")
_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64}
_RENAMED = {"learning_rate": "lr", "wd": "weight_decay"}


class Optimizer(torch.optim.Optimizer):
    """A torch optimizer running the optforge spec `optimizer` (a registered name such as "adam",
    "lamb", "lars", or an optforge Optimizer subclass).

    params : iterable of tensors, of (name, tensor) pairs, or of param-group dicts.
    lr : the learning rate (default: the spec's default learning rate).
    weight_decay : the spec's `wd` (default: the spec's default, usually 0).
    backend : "auto", "numpy" or "native" for CPU tensors (see optforge.Optimizer.backend).
    reduce_hook : None, or a callable applied to the partial result of every whole-tensor
        reduction during a step (see `all_reduce_hook`); for parameters sharded across processes.
    **hyper : the spec's hyperparameters (e.g. beta1=0.9) and rescale_grad, clip_gradient,
        multi_precision (a float32 master copy of float16 / bfloat16 parameters), stochastic_rounding
        (of bfloat16 parameters without one); each may also be set per param group.
    """

    _step_supports_amp_scaling = True   # torch.amp.GradScaler hands over grad_scale and found_inf (see step)

    def __init__(self, params, optimizer="adam", lr=None, weight_decay=None, *, backend="auto",
                 reduce_hook=None, max_grad_norm=None, skip_nonfinite=False, **hyper):
        klass = _spec_class(optimizer)
        allowed = [h.name for h in klass.hyperparams] + list(BASE_KEYS)
        for key in hyper:
            if key not in allowed:
                hint = _RENAMED.get(key) or next(iter(difflib.get_close_matches(key, allowed + ["lr", "weight_decay"],
                                                                                  n=1)), None)
                raise TypeError(f"{klass.spec_name} got an unexpected keyword argument {key!r}"
                                + (f"; did you mean {hint!r}?" if hint else ""))
        if backend not in ("auto", "numpy", "native"):
            raise ValueError(f"backend must be 'auto', 'numpy' or 'native', got {backend!r}")
        if reduce_hook is not None and not callable(reduce_hook):
            raise TypeError(f"reduce_hook must be callable, got {type(reduce_hook).__name__}")
        if max_grad_norm is not None:
            _number("max_grad_norm", max_grad_norm, finite=True)
            if not max_grad_norm > 0:
                raise ValueError(f"max_grad_norm must be > 0 (or None: no clipping), got {max_grad_norm!r}")
        if not isinstance(skip_nonfinite, bool):
            raise TypeError(f"skip_nonfinite must be a bool, got {skip_nonfinite!r}")
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.skip_nonfinite = skip_nonfinite
        self.skipped_steps = 0   # steps skipped for an inf/NaN gradient (GradScaler's or skip_nonfinite)
        base = klass.base_defaults
        defaults = {"lr": base.get("learning_rate", 0.01) if lr is None else lr,
                    "weight_decay": base.get("wd", 0.0) if weight_decay is None else weight_decay}
        defaults.update({h.name: h.default for h in klass.hyperparams})
        defaults.update({"rescale_grad": base.get("rescale_grad", 1.0), "clip_gradient": base.get("clip_gradient"),
                         "multi_precision": base.get("multi_precision", False), "stochastic_rounding": False})
        defaults.update(hyper)
        defaults = self._group_defaults(defaults)
        self.spec = klass
        self.backend = backend
        self.reduce_hook = reduce_hook
        self._opts: list[SpecOptimizer] = []    # one per param group
        self._index: dict = {}                  # param -> its index (torch's state_dict numbering)
        self._optstates: dict = {}              # param -> OptState holding views of self.state[param]
        super().__init__(params, defaults)

    def __repr__(self):
        return f"optforge.torch.Optimizer({self.spec.spec_name}, {len(self.param_groups)} group(s))"

    # ---- groups ------------------------------------------------------------------------------------------
    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            if p.dtype not in _DTYPES:
                self.param_groups.pop()
                raise TypeError(f"optforge updates float16, bfloat16, float32 and float64 parameters, got {p.dtype}")
            if p.device.type not in ("cpu", "cuda"):
                self.param_groups.pop()
                raise TypeError(f"optforge updates CPU and CUDA tensors, got a {p.device.type} tensor")
        try:
            opt = self._make(group)
        except BaseException:
            self.param_groups.pop()
            raise
        self._opts.append(opt)
        for p in group["params"]:
            self._index[p] = len(self._index)
        names = group.get("param_names")
        if names:
            opt.idx2name = {self._index[p]: n for p, n in zip(group["params"], names)}

    def _make(self, group) -> SpecOptimizer:
        """The optforge optimizer of one group (its hyperparameters validated by the spec)."""
        for key in _RENAMED:
            if key in group:
                raise TypeError(f"param group key {key!r}: optforge.torch uses {_RENAMED[key]!r}")
        hyper = self._hypers(group)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = self.spec(learning_rate=_float(group["lr"], "lr"), wd=_float(group["weight_decay"], "weight_decay"),
                            **{k: group[k] for k in BASE_KEYS}, **hyper)
        opt.backend = self.backend
        return opt

    def _group_defaults(self, defaults):
        """The param-group defaults as torch sees them (drop-in classes rename and pack some)."""
        return defaults

    def _hypers(self, group) -> dict:
        """The spec's hyperparameter values held by a param group."""
        return {h.name: group[h.name] for h in self.spec.hyperparams}

    def _sync(self, group, opt):
        """Copy a group's (possibly scheduled or edited) values into its optforge optimizer."""
        lr = _float(group["lr"], "lr")
        if lr != opt.lr:
            opt.lr = lr
        wd = _float(group["weight_decay"], "weight_decay")
        if wd != opt.wd:
            opt.wd = wd
        values = self._hypers(group)
        for h in self.spec.hyperparams:
            value = values[h.name]
            if value != getattr(opt, h.name) or type(value) is not type(getattr(opt, h.name)):
                checked = h.check(value)
                if checked != getattr(opt, h.name):
                    opt._set_hypers({h.name: checked})
        if group["rescale_grad"] != opt.rescale_grad:
            _number("rescale_grad", group["rescale_grad"], finite=True)
            opt.rescale_grad = float(group["rescale_grad"])
        clip = group["clip_gradient"]
        if clip != opt.clip_gradient:
            if clip is not None:
                _number("clip_gradient", clip)
            opt.clip_gradient = None if clip is None else float(clip)
        if bool(group["multi_precision"]) != opt.multi_precision:
            opt.multi_precision = bool(group["multi_precision"])
        if group["stochastic_rounding"] is not opt.stochastic_rounding:
            if not isinstance(group["stochastic_rounding"], bool):
                raise TypeError(f"stochastic_rounding must be a bool, got {group['stochastic_rounding']!r}")
            opt.stochastic_rounding = group["stochastic_rounding"]

    # ---- the step ------------------------------------------------------------------------------------------
    def step(self, closure=None):
        """One update of every parameter that has a gradient; `closure` re-evaluates the loss.

        Step control covers all param groups together: with `max_grad_norm` the gradients are
        clipped to that global norm (torch.nn.utils.clip_grad_norm_ over every parameter), with
        `skip_nonfinite` an inf/NaN gradient skips the whole step. Under torch.amp.GradScaler
        (`scaler.step(opt)`) the scaler's `found_inf` skips the step and its `grad_scale` is divided
        out as the kernels read the gradients (none when `scaler.unscale_(opt)` ran already: no
        second unscaling). A skipped step changes no weight, state or counter; `skipped_steps`
        counts them."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and float(found_inf) > 0:
            self.skipped_steps += 1
            return loss
        loss_scale = getattr(self, "grad_scale", None)
        loss_scale = 1.0 if loss_scale is None else float(loss_scale)
        calls = []   # (group's optimizer, device, params, weights, grads): all validated views first
        for group, opt in zip(self.param_groups, self._opts):
            self._sync(group, opt)
            by_device: dict = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_device.setdefault(p.device, []).append(p)
            for device, params in by_device.items():
                with _on_device(device):
                    calls.append((opt, device, params, [_view(p, "parameter") for p in params],
                                  [_grad(p) for p in params]))
        with ops.reduce_hook(self.reduce_hook):
            scale = grad_scale([g for call in calls for g in call[4]], self.max_grad_norm, self.skip_nonfinite,
                               loss_scale, self._opts[0] if calls else None)
        if scale is None:
            self.skipped_steps += 1
            return loss
        parts = []   # (optimizer, indices, weights, grads, states), the states made on their devices
        for opt, device, params, weights, grads in calls:
            with _on_device(device):
                parts.append((opt, [self._index[p] for p in params], weights, grads,
                              [self._state(p, w, opt) for p, w in zip(params, weights)]))
        if getattr(self.spec, "gathers", 0) and len(parts) > 1:
            # optimizer-wide reductions span every group: one update call (Prodigy's d, as prodigyopt's)
            with ops.reduce_hook(self.reduce_hook):
                update_together(parts, scale)
        else:
            for (opt, device, *_), (_, indices, weights, grads, states) in zip(calls, parts):
                with _on_device(device), ops.reduce_hook(self.reduce_hook):
                    opt._update(indices, weights, grads, states, scale)
        for (opt, _, params, _, _), part in zip(calls, parts):
            if opt.scalar_states:
                for p, st in zip(params, part[4]):
                    self.state[p].update(st.scalars)
        return loss

    def _state(self, p, weight, opt) -> OptState:
        """The OptState of `p`, created on its first step: torch tensors in self.state[p], the
        kernels' arrays viewing their memory."""
        st = self._optstates.get(p)
        if st is None:
            st = opt.create_state_multi_precision(self._index[p], weight)
            entry = {name: _tensor(a) for name, a in st.tensors.items()}
            if st.master is not None:
                entry[MASTER] = _tensor(st.master)
            entry.update(st.scalars)
            self.state[p] = entry
            self._optstates[p] = st
        return st

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def state_dict(self):
        sd = super().state_dict()
        sd["state"] = {k: {name: v if isinstance(v, torch.Tensor) else _enc(v) for name, v in entry.items()}
                       for k, entry in sd["state"].items()}
        sd["optforge"] = {
            "format": FORMAT, "version": VERSION, "spec_name": self.spec.spec_name, "spec_hash": self.spec.spec_hash,
            "skipped_steps": self.skipped_steps,
            "groups": [{"num_update": opt.num_update,
                        "counts": [[i, n] for i, n in opt._index_update_count.items()],
                        "globals": {k: _enc(v) for k, v in opt._globals.items()},
                        "rng": _enc(opt._rng.bit_generator.state)} for opt in self._opts],
        }
        return sd

    def load_state_dict(self, state_dict):
        """Load what state_dict() returned (after torch.save/torch.load too). The spec must be the same
        one (name and hash); ValueError otherwise, and on a damaged record."""
        sd = dict(state_dict)
        record = sd.pop("optforge", None)
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError("not an optforge.torch state_dict (no 'optforge' record); a torch optimizer's "
                             "state cannot be loaded into an optforge one")
        if record.get("version") != VERSION:
            raise ValueError(f"optforge.torch state_dict version {record.get('version')!r} is not supported")
        if record.get("spec_name") != self.spec.spec_name:
            raise ValueError(f"state_dict belongs to a {record.get('spec_name')} optimizer, not {self.spec.spec_name}")
        if record.get("spec_hash") != self.spec.spec_hash:
            raise ValueError(f"state_dict was written by {self.spec.spec_name} spec {record.get('spec_hash')!r}, the "
                             f"installed spec is {self.spec.spec_hash!r}: the update rule may differ")
        groups = record.get("groups")
        if not isinstance(groups, list) or len(groups) != len(sd.get("param_groups", ())):
            raise ValueError("optforge record: one entry per param group expected")
        saved = dict(sd["state"])   # before torch casts tensors to the parameters' dtype
        # nothing changes unless all of it loads: torch's own load replaces param_groups and state,
        # so keeping the old objects is enough to put everything back
        before = (self.param_groups, self.state, getattr(self, "_opts", None), getattr(self, "_optstates", None))
        skipped = _int(record.get("skipped_steps", 0), "skipped_steps")   # (older records: none)
        try:
            self._load(sd, saved, groups, skipped)
        except BaseException:
            self.param_groups, self.state = before[0], before[1]
            self._opts, self._optstates = before[2], before[3]
            raise

    def _load(self, sd, saved, groups, skipped):
        super().load_state_dict(sd)
        opts = [self._make(g) for g in self.param_groups]
        try:
            for opt, group, rec in zip(opts, self.param_groups, groups):
                counts = {_int(i, "parameter index"): _int(n, "update count") for i, n in rec["counts"]}
                opt._all_index_update_counts = {0: counts}
                opt._index_update_count = counts
                opt.num_update = _int(rec["num_update"], "num_update")
                opt._globals = {k: _value(v, f"global {k!r}") for k, v in rec["globals"].items()}
                rng = _dec(rec["rng"])
                bit_generator = getattr(np.random, rng["bit_generator"])()
                bit_generator.state = rng
                opt._rng = np.random.Generator(bit_generator)
                if group.get("param_names"):
                    opt.idx2name = {self._index[p]: n for p, n in zip(group["params"], group["param_names"])}
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, _Damaged) as e:
            raise ValueError(f"bad optforge record in state_dict: {type(e).__name__}: {e}") from None
        self._opts = opts
        self.skipped_steps = skipped
        self._optstates = {}
        state = {}
        for group, opt in zip(self.param_groups, opts):
            for p in group["params"]:
                entry = saved.get(self._index[p])
                if entry is None:
                    continue
                state[p], self._optstates[p] = _restore(p, entry, opt.state_layout(tuple(p.shape)), opt)
        self.state.clear()
        self.state.update(state)


# ---- drop-in torch.optim classes -------------------------------------------------------------------------------
# torch.optim constructor flags a spec's `option torch` signature may list (codegen/names.py TORCH_FLAGS):
# name -> (default, None if any value is accepted, else why True is refused)
TORCH_FLAGS = {
    "foreach": (None, None), "fused": (None, None),   # no effect: optforge always runs its fused kernels
    "capturable": (False, "optforge kernels run outside CUDA graphs: they cannot be captured"),
    "differentiable": (False, "optforge kernels update the tensors' memory outside autograd: the step "
                              "cannot be differentiated"),
}
_BASE_TORCH = {"lr", "weight_decay"}


class _DropIn(Optimizer):
    """A torch.optim class's constructor over a spec; built by `dropin` from the spec's
    `option torch` and `option torch_pairs` (class attributes `spec`, `torch_signature`, `torch_pairs`)."""

    spec: type
    torch_signature: inspect.Signature
    torch_pairs: dict   # torch name -> (first hyperparameter, second)

    def __init__(self, params, *args, **kwargs):
        bound = self.torch_signature.bind(params, *args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        del values["params"]
        backend, reduce_hook = values.pop("backend"), values.pop("reduce_hook")
        max_grad_norm, skip_nonfinite = values.pop("max_grad_norm"), values.pop("skip_nonfinite")
        rounding = {k: values.pop(k) for k in ("multi_precision", "stochastic_rounding")}
        lr, weight_decay = values.pop("lr"), values.pop("weight_decay", None)   # Rprop has no weight_decay
        self._flags = {k: values.pop(k) for k in list(values) if k in TORCH_FLAGS}
        _check_flags(type(self).__name__, self._flags)
        hyper = {}
        for name, value in values.items():
            if name in self.torch_pairs:
                hyper.update(zip(self.torch_pairs[name], _pair(name, value)))
            else:
                hyper[name] = value
        super().__init__(params, self.spec, lr=lr, weight_decay=weight_decay, backend=backend,
                         reduce_hook=reduce_hook, max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite,
                         **rounding, **hyper)

    def __repr__(self):
        return f"optforge.torch.{type(self).__name__}({self.spec.spec_name}, {len(self.param_groups)} group(s))"

    def _group_defaults(self, defaults):
        out = dict(defaults)
        for name, (a, b) in self.torch_pairs.items():
            out[name] = (out.pop(a), out.pop(b))
        out.update(self._flags)
        return out

    def _hypers(self, group) -> dict:
        _check_flags(type(self).__name__, {k: group[k] for k in self._flags if k in group})
        values = {}
        for h in self.spec.hyperparams:
            if h.name in values:
                continue
            pair = next((n for n, members in self.torch_pairs.items() if h.name in members), None)
            if pair is None:
                values[h.name] = group[h.name]
            else:
                values.update(zip(self.torch_pairs[pair], _pair(pair, group[pair])))
        return values


def _check_flags(owner, flags):
    for name, value in flags.items():
        why = TORCH_FLAGS[name][1]
        if why is not None and value:
            raise ValueError(f"{owner}: {name}=True is not supported: {why}")
        if name in ("foreach", "fused") and value is not None and not isinstance(value, bool):
            raise TypeError(f"{owner}: {name} must be None or a bool, got {value!r}")


def _pair(name, value):
    if isinstance(value, torch.Tensor) or not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair of numbers, got {value!r}")
    return tuple(_float(v, name) if isinstance(v, torch.Tensor) else v for v in value)


def dropin(optimizer) -> type:
    """The torch.optim-compatible class of a spec that declares `option torch("Name", ...)`: its
    constructor takes torch's arguments in torch's order with the spec's defaults (plus optforge's
    keyword-only `backend` and `reduce_hook`). `optimizer` is a registered name or a spec class."""
    klass = _spec_class(optimizer)
    spec_sig = klass.options.get("torch")
    if not spec_sig:
        raise ValueError(f"{klass.spec_name} declares no `option torch(...)` signature; "
                         f"use optforge.torch.Optimizer(params, {klass.spec_name.lower()!r}, ...)")
    name, args = spec_sig[0], spec_sig[1:]
    raw = klass.options.get("torch_pairs", ())
    pairs = {raw[i]: (raw[i + 1], raw[i + 2]) for i in range(0, len(raw), 3)}
    hypers = {h.name: h.default for h in klass.hyperparams}
    base = klass.base_defaults
    defaults = {"lr": base.get("learning_rate", 0.01), "weight_decay": base.get("wd", 0.0)}
    P = inspect.Parameter
    kind = P.POSITIONAL_OR_KEYWORD
    parameters = [P("params", kind)]
    for arg in args:
        if arg == "*":
            kind = P.KEYWORD_ONLY
            continue
        if arg in defaults:
            default = defaults[arg]
        elif arg in pairs:
            default = tuple(hypers[m] for m in pairs[arg])
        elif arg in TORCH_FLAGS:
            default = TORCH_FLAGS[arg][0]
        else:
            default = hypers[arg]
        parameters.append(P(arg, kind, default=default))
    parameters += [P("backend", P.KEYWORD_ONLY, default="auto"), P("reduce_hook", P.KEYWORD_ONLY, default=None),
                   P("max_grad_norm", P.KEYWORD_ONLY, default=None), P("skip_nonfinite", P.KEYWORD_ONLY, default=False),
                   P("multi_precision", P.KEYWORD_ONLY, default=False),
                   P("stochastic_rounding", P.KEYWORD_ONLY, default=False)]
    signature = inspect.Signature(parameters)
    doc = (f"torch.optim.{name}'s constructor and semantics, run by optforge's {klass.__name__} kernels "
           f"(spec {klass.spec_path}).\n\n    {name}{signature}\n\n"
           "foreach and fused are accepted and have no effect (optforge always runs its fused kernels); "
           "capturable=True and differentiable=True raise ValueError. backend, reduce_hook, max_grad_norm, "
           "skip_nonfinite, multi_precision (a float32 master copy of 16-bit parameters) and stochastic_rounding "
           "(of bfloat16 parameters without one) are "
           "optforge.torch.Optimizer's.\n\n" + (klass.__doc__ or ""))
    return type(name, (_DropIn,), {"spec": klass, "torch_signature": signature, "torch_pairs": pairs,
                                   "__signature__": signature, "__doc__": doc, "__module__": __name__,
                                   "__qualname__": name})


def _dropins():
    """The drop-in class of every bundled spec with an `option torch` signature, by torch name."""
    out = {}
    for klass in dict.fromkeys(registry.registered().values()):
        spec_sig = getattr(klass, "options", {}).get("torch")
        if spec_sig and spec_sig[0] not in out:
            out[spec_sig[0]] = dropin(klass)
    return out


def all_reduce_hook(group=None, device=None):
    """A reduce hook summing partial reductions over the processes of `group` with
    torch.distributed.all_reduce (one float64 all-reduce per reduction). `device` is where the
    one-element tensor lives (default: CUDA for the NCCL backend, CPU otherwise)."""
    import torch.distributed as dist

    def hook(partial: float) -> float:
        where = device or ("cuda" if dist.get_backend(group) == "nccl" else "cpu")
        t = torch.tensor([partial], dtype=torch.float64, device=where)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        return float(t.item())
    return hook


# ---- helpers ------------------------------------------------------------------------------------------------
def _spec_class(optimizer):
    if isinstance(optimizer, str):
        table = registry.registered()
        klass = table.get(optimizer.lower())
        if klass is None:
            close = difflib.get_close_matches(optimizer.lower(), sorted(table), n=1)
            raise ValueError(f"unknown optimizer {optimizer!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
        return klass
    if isinstance(optimizer, type) and issubclass(optimizer, SpecOptimizer):
        return optimizer
    raise TypeError(f"optimizer must be a registered name or an optforge Optimizer class, got {optimizer!r}")


def _float(v, what) -> float:
    if isinstance(v, torch.Tensor):
        v = v.item()
    _number(what, v, finite=True)
    return float(v)


def _view(t, what):
    """The NumPy (CPU) or CuPy (CUDA) array sharing `t`'s memory."""
    t = t.detach()
    if not t.is_contiguous():
        raise ValueError(f"{what} is not contiguous; optforge updates it in place through a flat view")
    if t.dtype == torch.bfloat16:   # NumPy has no bfloat16: ml_dtypes' (CuPy 14's), over the same bits
        bits = t.view(torch.int16)
        return _view(bits, what).view(BFLOAT16)
    if t.device.type == "cuda":
        import cupy
        return cupy.from_dlpack(t)
    return t.numpy()


def _tensor(a):
    """The torch tensor sharing the memory of a NumPy or CuPy array."""
    if a.dtype == BFLOAT16:
        return _tensor(a.view(np.int16)).view(torch.bfloat16)
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.from_dlpack(a)


def _grad(p):
    g = p.grad
    if g.layout == torch.sparse_coo:
        g = g.coalesce()
        if g.sparse_dim() == 1:
            return RowSparse(_view(g._values().contiguous(), "gradient"), _view(g._indices()[0].contiguous(), "indices"),
                             tuple(p.shape))
        g = g.to_dense()
    elif g.layout != torch.strided:
        g = g.to_dense()
    return _view(g if g.is_contiguous() else g.contiguous(), "gradient")


@contextlib.contextmanager
def _on_device(device):
    """CUDA work goes on torch's current stream of `device`, so CuPy kernels order with torch's."""
    if device.type != "cuda":
        yield
        return
    import cupy
    with cupy.cuda.Device(device.index or 0), \
            cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream):
        yield


def _restore(p, entry, layout, opt):
    """(self.state entry, OptState) for `p` from a saved state entry: tensors copied onto p's device in
    their saved dtype, scalars decoded, all checked against the spec's layout."""
    if not isinstance(entry, dict):
        raise ValueError(f"state of parameter {tuple(p.shape)} is not a dict")
    names = [k for k, v in entry.items() if isinstance(v, torch.Tensor) and k != MASTER]
    scalars = {k: _value(v, f"scalar {k!r}") for k, v in entry.items() if not isinstance(v, torch.Tensor)}
    problem = layout.mismatch(names, scalars, opt.spec_name)
    if problem:
        raise ValueError(f"saved state of parameter {tuple(p.shape)} {problem}")
    master = entry.get(MASTER)
    if master is not None and p.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"a master copy belongs to a float16 or bfloat16 parameter, not {p.dtype}")
    want = torch.float32 if master is not None else p.dtype
    tensors = {}
    for name in names + ([MASTER] if master is not None else []):
        t = entry[name]
        shape = tuple(p.shape) if name == MASTER else tuple(layout.shape_of(name))
        dtype = want if name == MASTER else _torch_dtype(opt.tensor_dtype(name, _np_dtype(want)))
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise ValueError(f"saved state tensor {name!r} is {t.dtype}{list(t.shape)}, expected {dtype}{list(shape)}")
        tensors[name] = t.detach().to(device=p.device, copy=True).contiguous()
    with _on_device(p.device):
        arrays = {k: _view(v, f"state {k!r}") for k, v in tensors.items()}
    master_arr = arrays.pop(MASTER, None)
    st = OptState(opt.spec_name, tuple(p.shape), _np_dtype(p.dtype), arrays, dict(scalars), master_arr)
    return dict(tensors, **scalars), st


def _torch_dtype(dtype):
    return {np.dtype(np.float16): torch.float16, BFLOAT16: torch.bfloat16, np.dtype(np.float32): torch.float32,
            np.dtype(np.float64): torch.float64, np.dtype(np.uint8): torch.uint8}[np.dtype(dtype)]


def _np_dtype(dtype):
    return {torch.float16: np.float16, torch.bfloat16: BFLOAT16, torch.float32: np.float32,
            torch.float64: np.float64}[dtype]


globals().update(_dropins())
__all__ += sorted(_dropins())
