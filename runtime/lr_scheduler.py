"""Learning-rate schedules with MXNet 1.x semantics, and a JSON-safe checkpoint format.

A scheduler maps ``num_update`` (the largest per-index update count, see the optimizer) to a
learning rate. Like MXNet's, the schedulers are *stateful*: Factor and MultiFactor decay an internal
``base_lr`` as ``num_update`` passes their steps and never undo it, and Poly and Cosine remember the
last value they computed. An optimizer given a ``learning_rate`` that differs from ``base_lr``
overwrites ``scheduler.base_lr`` after construction; warmup always ramps to the ``base_lr`` given
at construction, and Poly and Cosine also decay from it.

``get_config()`` / ``from_config()`` save and rebuild a scheduler, state included, as plain JSON
data (never pickle), so that a rebuilt scheduler continues exactly like the original.

>>> s = FactorScheduler(step=2, factor=0.5, base_lr=1.0)
>>> [s(n) for n in range(1, 7)]
[1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
>>> from_config(s.get_config())(7)
0.125
"""
import inspect
import logging
import math
from numbers import Integral, Real

__all__ = ["LRScheduler", "FactorScheduler", "MultiFactorScheduler", "PolyScheduler",
           "CosineScheduler", "from_config"]

_log = logging.getLogger(__name__)


def _check(ok, name, value, must):
    if not ok:
        raise ValueError(f"Invalid {name} value: {value!r} (must be {must})")


def _is_int(x):
    return isinstance(x, Integral) and not isinstance(x, bool)


def _is_real(x):
    return isinstance(x, Real) and not isinstance(x, bool)


class LRScheduler:
    """Base class: a constant ``base_lr`` after an optional warmup.

    For ``num_update < warmup_steps`` the rate is, with ``lr0`` the ``base_lr`` given at
    construction::

        linear:   warmup_begin_lr + (lr0 - warmup_begin_lr) * num_update / warmup_steps
        constant: warmup_begin_lr

    Subclasses define the rate after warmup in ``__call__``.
    """
    # constructor argument -> attribute holding it; mutable attributes saved as state
    _ARGS = {"base_lr": "warmup_final_lr", "warmup_steps": "warmup_steps",
             "warmup_begin_lr": "warmup_begin_lr", "warmup_mode": "warmup_mode"}
    _STATE = ("base_lr",)

    def __init__(self, base_lr=0.01, warmup_steps=0, warmup_begin_lr=0, warmup_mode='linear'):
        _check(_is_real(base_lr), "base_lr", base_lr, "a number")
        _check(_is_int(warmup_steps) and warmup_steps >= 0, "warmup_steps", warmup_steps,
               "an integer >= 0")
        _check(_is_real(warmup_begin_lr) and warmup_begin_lr <= base_lr, "warmup_begin_lr",
               warmup_begin_lr, f"a number <= base_lr={base_lr!r}")
        _check(warmup_mode in ('linear', 'constant'), "warmup_mode", warmup_mode,
               "'linear' or 'constant'")
        self.base_lr = base_lr
        self.warmup_final_lr = base_lr
        self.warmup_steps = warmup_steps
        self.warmup_begin_lr = warmup_begin_lr
        self.warmup_mode = warmup_mode

    def get_warmup_lr(self, num_update):
        """The warmup rate; valid only for ``num_update < warmup_steps``."""
        if not num_update < self.warmup_steps:
            raise ValueError(f"num_update={num_update} is not inside the warmup "
                             f"(warmup_steps={self.warmup_steps})")
        if self.warmup_mode == 'constant':
            return self.warmup_begin_lr
        span = self.warmup_final_lr - self.warmup_begin_lr
        return self.warmup_begin_lr + span * float(num_update) / float(self.warmup_steps)

    def __call__(self, num_update):
        """Return the learning rate for ``num_update`` (max updates applied to any weight)."""
        raise NotImplementedError(f"{type(self).__name__} must override __call__")

    def get_config(self):
        """``{"type", "args", "state"}`` of plain JSON values; see :func:`from_config`."""
        args = {arg: getattr(self, attr) for arg, attr in self._ARGS.items()}
        if isinstance(args.get("step"), list):
            args["step"] = list(args["step"])  # a copy, not the live list
        state = {key: getattr(self, key) for key in self._STATE}
        return {"type": type(self).__name__, "args": args, "state": state}

    def _set_state(self, state):
        for key in self._STATE:
            _check(_is_real(state[key]), f"state {key}", state[key], "a number")
            setattr(self, key, state[key])

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, a)!r}" for k, a in self._ARGS.items())
        return f"{type(self).__name__}({args})"


class FactorScheduler(LRScheduler):
    """Multiply the rate by ``factor`` every ``step`` updates, never below ``stop_factor_lr``.

    After warmup, for a monotone sequence of calls::

        lr = max(base_lr * factor ** k, stop_factor_lr),   k = max(0, ceil(num_update / step) - 1)

    A decay happens when ``num_update > count + step`` (strictly); ``count`` starts at 0, so the
    warmup updates count as steps. Decays are never undone by a smaller ``num_update``. The floor is
    applied only at a decay: a ``base_lr`` already below ``stop_factor_lr`` is *raised* to it at
    the first decay, as in MXNet.
    """
    _ARGS = {"step": "step", "factor": "factor", "stop_factor_lr": "stop_factor_lr",
             **LRScheduler._ARGS}
    _STATE = ("base_lr", "count")

    def __init__(self, step, factor=1, stop_factor_lr=1e-8, base_lr=0.01,
                 warmup_steps=0, warmup_begin_lr=0, warmup_mode='linear'):
        super().__init__(base_lr, warmup_steps, warmup_begin_lr, warmup_mode)
        _check(_is_real(step) and step >= 1, "step", step, "a number >= 1")
        _check(_is_real(factor) and factor <= 1.0, "factor", factor, "a number <= 1")
        _check(_is_real(stop_factor_lr), "stop_factor_lr", stop_factor_lr, "a number")
        self.step = step
        self.factor = factor
        self.stop_factor_lr = stop_factor_lr
        self.count = 0

    def __call__(self, num_update):
        if num_update < self.warmup_steps:
            return self.get_warmup_lr(num_update)
        while num_update > self.count + self.step:  # a loop, so that resuming catches up
            self.count += self.step
            self.base_lr *= self.factor
            if self.base_lr < self.stop_factor_lr:
                self.base_lr = self.stop_factor_lr
            _log.info("Update[%d]: learning rate is now %0.5e", num_update, self.base_lr)
        return self.base_lr


class MultiFactorScheduler(LRScheduler):
    """Multiply the rate by ``factor`` each time ``num_update`` passes a boundary in ``step``.

    After warmup, with ``k`` the number of boundaries ``s`` in ``step`` with ``s < num_update``
    (strictly) ever seen::

        lr = base_lr * factor ** k

    ``step`` must be a strictly increasing list of numbers >= 1. There is no floor.
    """
    _ARGS = {"step": "step", "factor": "factor", **LRScheduler._ARGS}
    _STATE = ("base_lr", "count", "cur_step_ind")

    def __init__(self, step, factor=1, base_lr=0.01, warmup_steps=0, warmup_begin_lr=0,
                 warmup_mode='linear'):
        super().__init__(base_lr, warmup_steps, warmup_begin_lr, warmup_mode)
        _check(isinstance(step, (list, tuple)) and len(step) >= 1, "step", step,
               "a non-empty list")
        for i, s in enumerate(step):
            _check(_is_real(s) and s >= 1, f"step[{i}]", s, "a number >= 1")
            _check(i == 0 or s > step[i - 1], f"step[{i}]", s,
                   f"greater than step[{i - 1}]={step[i - 1]!r}: steps must increase")
        _check(_is_real(factor) and factor <= 1.0, "factor", factor, "a number <= 1")
        self.step = list(step)
        self.factor = factor
        self.count = 0
        self.cur_step_ind = 0

    def __call__(self, num_update):
        if num_update < self.warmup_steps:
            return self.get_warmup_lr(num_update)
        while self.cur_step_ind < len(self.step) and num_update > self.step[self.cur_step_ind]:
            self.count = self.step[self.cur_step_ind]
            self.cur_step_ind += 1
            self.base_lr *= self.factor
            _log.info("Update[%d]: learning rate is now %0.5e", num_update, self.base_lr)
        return self.base_lr

    def _set_state(self, state):
        ind = state["cur_step_ind"]
        _check(_is_int(ind) and 0 <= ind <= len(self.step), "state cur_step_ind", ind,
               f"an integer in [0, {len(self.step)}]")
        super()._set_state(state)


class _DecayToFinal(LRScheduler):
    """Shared part of Poly and Cosine: decay from the construction lr to ``final_lr``.

    Unlike MXNet, ``max_update <= warmup_steps`` is rejected at construction: MXNet divides by
    zero at ``num_update == max_update`` when they are equal, and never decays when warmup is longer.
    """

    def __init__(self, max_update, base_lr, final_lr, warmup_steps, warmup_begin_lr, warmup_mode):
        super().__init__(base_lr, warmup_steps, warmup_begin_lr, warmup_mode)
        _check(_is_int(max_update) and max_update >= 1, "max_update", max_update,
               "an integer >= 1")
        _check(max_update > warmup_steps, "max_update", max_update,
               f"greater than warmup_steps={warmup_steps}")
        _check(_is_real(final_lr), "final_lr", final_lr, "a number")
        self.base_lr_orig = base_lr
        self.max_update = max_update
        self.final_lr = final_lr
        self.max_steps = max_update - warmup_steps

    def __call__(self, num_update):
        if num_update < self.warmup_steps:
            return self.get_warmup_lr(num_update)
        if num_update <= self.max_update:
            self.base_lr = self._decay(num_update - self.warmup_steps)
        return self.base_lr  # past max_update: the last rate computed (or base_lr if none was)


class PolyScheduler(_DecayToFinal):
    """Polynomial decay over the ``max_update - warmup_steps`` updates after warmup.

    With ``lr0`` the ``base_lr`` given at construction, ``T = max_update - warmup_steps`` and
    ``t = num_update - warmup_steps``::

        lr = final_lr + (lr0 - final_lr) * (1 - t / T) ** pwr      for t <= T

    Past ``max_update`` the last computed rate is kept.
    """
    _ARGS = {"max_update": "max_update", "pwr": "power", "final_lr": "final_lr",
             **LRScheduler._ARGS}

    def __init__(self, max_update, base_lr=0.01, pwr=2, final_lr=0,
                 warmup_steps=0, warmup_begin_lr=0, warmup_mode='linear'):
        super().__init__(max_update, base_lr, final_lr, warmup_steps, warmup_begin_lr,
                         warmup_mode)
        _check(_is_real(pwr), "pwr", pwr, "a number")
        self.power = pwr

    def _decay(self, t):
        frac = 1 - float(t) / float(self.max_steps)
        return self.final_lr + (self.base_lr_orig - self.final_lr) * pow(frac, self.power)


class CosineScheduler(_DecayToFinal):
    """Half-cosine decay over the ``max_update - warmup_steps`` updates after warmup.

    With ``lr0``, ``T`` and ``t`` as for :class:`PolyScheduler`::

        lr = final_lr + (lr0 - final_lr) * (1 + cos(pi * t / T)) / 2      for t <= T

    Past ``max_update`` the last computed rate is kept.
    """
    _ARGS = {"max_update": "max_update", "final_lr": "final_lr", **LRScheduler._ARGS}

    def __init__(self, max_update, base_lr=0.01, final_lr=0,
                 warmup_steps=0, warmup_begin_lr=0, warmup_mode='linear'):
        super().__init__(max_update, base_lr, final_lr, warmup_steps, warmup_begin_lr,
                         warmup_mode)

    def _decay(self, t):
        cosine = 1 + math.cos(math.pi * t / self.max_steps)
        return self.final_lr + (self.base_lr_orig - self.final_lr) * cosine / 2


_TYPES = {cls.__name__: cls for cls in
          (FactorScheduler, MultiFactorScheduler, PolyScheduler, CosineScheduler)}


def from_config(cfg):
    """Rebuild a scheduler from ``get_config()`` output (a dict of plain JSON values).

    ``"state"`` may be left out for a fresh scheduler. Raises ``ValueError`` for an unknown type,
    unknown or missing keys, or invalid values.
    """
    if not isinstance(cfg, dict):
        raise ValueError(f"scheduler config must be a dict, got {type(cfg).__name__}")
    _keys("scheduler config", cfg, required={"type", "args"}, allowed={"type", "args", "state"})
    cls = _TYPES.get(cfg["type"])
    if cls is None:
        raise ValueError(f"unknown scheduler type {cfg['type']!r} "
                         f"(known: {', '.join(sorted(_TYPES))})")
    args = cfg["args"]
    required = {p.name for p in inspect.signature(cls).parameters.values()
                if p.default is inspect.Parameter.empty}
    _keys(f"{cls.__name__} args", args, required=required, allowed=set(cls._ARGS))
    sched = cls(**args)
    if cfg.get("state") is not None:
        _keys(f"{cls.__name__} state", cfg["state"], required=set(cls._STATE),
              allowed=set(cls._STATE))
        sched._set_state(cfg["state"])
    return sched


def _keys(what, d, required, allowed):
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a dict, got {type(d).__name__}")
    unknown, missing = sorted(set(d) - allowed), sorted(required - set(d))
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {unknown} (allowed: {sorted(allowed)})")
    if missing:
        raise ValueError(f"{what}: missing key(s) {missing}")
