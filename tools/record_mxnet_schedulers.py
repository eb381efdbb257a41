"""Record MXNet 1.x learning-rate schedules into tests/fixtures/mxnet/schedulers.json.

Run by hand with a Python that has MXNet 1.x installed (never in CI):

    /work/mxvenv/bin/python tools/record_mxnet_schedulers.py

Each case builds a scheduler, optionally hands it to ``mx.optimizer.SGD(learning_rate=...)`` so
that the optimizer overwrites ``base_lr`` exactly as it does in training, then calls it on a list
of ``num_update`` values (monotone, repeated, jumping forward and going back) and records the rates
and the scheduler's mutable attributes afterwards. Error cases record what MXNet raises at
construction; ``arg`` names the argument at fault (our message must name it).
"""
import contextlib
import io
import json
import pathlib

import mxnet as mx
from mxnet import lr_scheduler as mx_lrs

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "mxnet" / "schedulers.json"
STATE_ATTRS = ("base_lr", "count", "cur_step_ind")

R30 = list(range(30))
BACK_AND_FORTH = [0, 0, 1, 1, 4, 4, 4, 17, 17, 3, 2, 40, 39, 100, 100]

CASES = [
    # id, class, kwargs, optimizer learning_rate (None: no optimizer), num_update calls
    ("factor-basic", "FactorScheduler", dict(step=3, factor=0.5, base_lr=1.0), None, R30),
    ("factor-floor", "FactorScheduler",
     dict(step=2, factor=0.1, stop_factor_lr=1e-4, base_lr=0.1), None, R30),
    ("factor-below-floor-is-raised", "FactorScheduler",
     dict(step=2, factor=1, stop_factor_lr=0.05, base_lr=0.01), None, list(range(8))),
    ("factor-defaults", "FactorScheduler", dict(step=1), None, list(range(10))),
    ("factor-float-step", "FactorScheduler", dict(step=2.5, factor=0.7, base_lr=0.3), None, R30),
    ("factor-warmup-linear", "FactorScheduler",
     dict(step=5, factor=0.9, base_lr=0.5, warmup_steps=8, warmup_begin_lr=0.1), None, R30),
    ("factor-warmup-constant", "FactorScheduler",
     dict(step=4, factor=0.5, base_lr=0.4, warmup_steps=6, warmup_begin_lr=0.05,
          warmup_mode="constant"), None, R30),
    ("factor-warmup-optimizer-lr", "FactorScheduler",
     dict(step=3, factor=0.5, base_lr=0.5, warmup_steps=4), 0.2, R30),
    ("factor-back-and-forth", "FactorScheduler",
     dict(step=4, factor=0.8, base_lr=1.0, warmup_steps=3, warmup_begin_lr=0.2), None,
     BACK_AND_FORTH),
    ("multi-basic", "MultiFactorScheduler", dict(step=[3, 7, 12], factor=0.5, base_lr=1.0), None,
     R30),
    ("multi-warmup-linear", "MultiFactorScheduler",
     dict(step=[10, 20], factor=0.1, base_lr=0.2, warmup_steps=5, warmup_begin_lr=0.01), None,
     R30),
    ("multi-warmup-constant", "MultiFactorScheduler",
     dict(step=[6, 9], factor=0.3, base_lr=0.2, warmup_steps=7, warmup_mode="constant"), None,
     R30),
    ("multi-optimizer-lr", "MultiFactorScheduler",
     dict(step=[2, 5], factor=0.5, base_lr=0.1, warmup_steps=2), 0.3, list(range(10))),
    ("multi-jump-past-all", "MultiFactorScheduler",
     dict(step=[3, 7, 12], factor=0.5, base_lr=1.0), None, [0, 25, 1, 2, 13, 30]),
    ("poly-basic", "PolyScheduler", dict(max_update=20, base_lr=1.0, pwr=2), None, R30),
    ("poly-final-lr", "PolyScheduler", dict(max_update=17, base_lr=0.3, pwr=1.5, final_lr=0.01),
     None, R30),
    ("poly-warmup-linear", "PolyScheduler",
     dict(max_update=25, base_lr=0.5, pwr=3, warmup_steps=5, warmup_begin_lr=0.05), None, R30),
    ("poly-warmup-constant", "PolyScheduler",
     dict(max_update=25, base_lr=0.5, warmup_steps=5, warmup_begin_lr=0.05,
          warmup_mode="constant"), None, R30),
    ("poly-optimizer-lr", "PolyScheduler",
     dict(max_update=20, base_lr=0.1, warmup_steps=4, warmup_begin_lr=0.01), 0.5, R30),
    ("poly-first-call-past-max", "PolyScheduler", dict(max_update=20, base_lr=0.1), 0.5,
     [30, 31, 5, 40, 20, 50]),
    ("cosine-basic", "CosineScheduler", dict(max_update=20, base_lr=1.0), None, R30),
    ("cosine-warmup-linear", "CosineScheduler",
     dict(max_update=24, base_lr=0.4, final_lr=0.004, warmup_steps=6, warmup_begin_lr=0.04),
     None, R30),
    ("cosine-warmup-constant", "CosineScheduler",
     dict(max_update=24, base_lr=0.4, warmup_steps=6, warmup_begin_lr=0.04,
          warmup_mode="constant"), None, R30),
    ("cosine-optimizer-lr", "CosineScheduler",
     dict(max_update=15, base_lr=0.1, final_lr=0.001, warmup_steps=3), 0.7, R30),
    ("cosine-back-and-forth", "CosineScheduler",
     dict(max_update=30, base_lr=0.1, warmup_steps=3, warmup_begin_lr=0.01), 0.2,
     BACK_AND_FORTH),
]

ERRORS = [
    # class, kwargs, argument at fault
    ("FactorScheduler", dict(step=0), "step"),
    ("FactorScheduler", dict(step=2, factor=1.5), "factor"),
    ("FactorScheduler", dict(step=2, warmup_steps=-1), "warmup_steps"),
    ("FactorScheduler", dict(step=2, warmup_steps=2.0), "warmup_steps"),
    ("FactorScheduler", dict(step=2, warmup_mode="exponential"), "warmup_mode"),
    ("FactorScheduler", dict(step=2, base_lr=0.1, warmup_begin_lr=0.5), "warmup_begin_lr"),
    ("MultiFactorScheduler", dict(step=[]), "step"),
    ("MultiFactorScheduler", dict(step=5), "step"),
    ("MultiFactorScheduler", dict(step=[5, 5]), "step[1]"),
    ("MultiFactorScheduler", dict(step=[5, 3]), "step[1]"),
    ("MultiFactorScheduler", dict(step=[0, 3]), "step[0]"),
    ("MultiFactorScheduler", dict(step=[2, 4], factor=2), "factor"),
    ("PolyScheduler", dict(max_update=0), "max_update"),
    ("PolyScheduler", dict(max_update=10.0), "max_update"),
    ("PolyScheduler", dict(max_update=10, warmup_mode="cosine"), "warmup_mode"),
    ("CosineScheduler", dict(max_update=-1), "max_update"),
    ("CosineScheduler", dict(max_update=10, base_lr=0.01, warmup_begin_lr=0.1),
     "warmup_begin_lr"),
]


def record_case(case_id, cls_name, kwargs, optimizer_lr, calls):
    sched = getattr(mx_lrs, cls_name)(**kwargs)
    if optimizer_lr is not None:
        with contextlib.redirect_stdout(io.StringIO()):  # MXNet prints a warning on overwrite
            mx.optimizer.SGD(learning_rate=optimizer_lr, lr_scheduler=sched)
    lrs = [sched(n) for n in calls]
    state = {k: getattr(sched, k) for k in STATE_ATTRS if hasattr(sched, k)}
    return dict(id=case_id, cls=cls_name, kwargs=kwargs, optimizer_lr=optimizer_lr,
                calls=calls, lrs=lrs, final_state=state)


def record_error(cls_name, kwargs, arg):
    try:
        getattr(mx_lrs, cls_name)(**kwargs)
    except Exception as e:  # noqa: BLE001 - recording whatever MXNet raises
        return dict(cls=cls_name, kwargs=kwargs, arg=arg, mxnet_error=type(e).__name__,
                    mxnet_message=str(e))
    raise SystemExit(f"MXNet accepted {cls_name}({kwargs}); not an error case")


def main():
    data = dict(mxnet_version=mx.__version__,
                cases=[record_case(*c) for c in CASES],
                errors=[record_error(*e) for e in ERRORS])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {len(data['cases'])} cases and {len(data['errors'])} error cases to {OUT}")


if __name__ == "__main__":
    main()
