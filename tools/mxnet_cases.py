"""The MXNet fixture case table, used by tools/record_mxnet.py.

``define_cases()`` returns the list of case dicts in recording order. Each ``add()`` call is one
case; the keyword arguments after ``kwargs`` choose the dtype, mode, schedule, parameter names and
multipliers, and (``gscale``, ``goffset``, ``wscale``, ``zero_params``) how the random data looks.
The fields are described in tests/fixtures/mxnet/README.md.
"""
import zlib

SHAPES = [(3, 4), (5,), (2, 3, 2)]
ONE = [(3, 4)]
FP16_PLAIN_TOL = 1e-2

TOL = {
    "float32": {"rtol": 1e-4, "atol": 1e-5},
    "float64": {"rtol": 1e-4, "atol": 1e-5},
    "float16-mp": {"rtol": 1e-3, "atol": 1e-3},
    "float16": {"rtol": FP16_PLAIN_TOL, "atol": FP16_PLAIN_TOL},
}

CASES = []


def add(case_id, optimizer, kwargs=None, *, shapes=SHAPES, dtype="float32", mp=False,
        mode="single", steps=4, sched=None, names=None, lr_mult=None, wd_mult=None,
        gscale=1.0, goffset=0.0, wscale=1.0, zero_params=(), stochastic=False):
    """Declare one case. gscale/goffset/wscale/zero_params only shape the random data."""
    kwargs = dict(kwargs or {})
    if mp:
        kwargs["multi_precision"] = True
    if dtype == "float16":
        tol = dict(TOL["float16-mp" if mp else "float16"])
    else:
        tol = dict(TOL[dtype])
    case = {
        "id": case_id,
        "optimizer": optimizer,
        "kwargs": kwargs,
        "lr_scheduler": sched,
        "param_idx2name": None if names is None else {str(k): v for k, v in enumerate(names)},
        "lr_mult": lr_mult,
        "wd_mult": wd_mult,
        "shapes": [list(s) for s in shapes],
        "dtype": dtype,
        "multi_precision": bool(mp),
        "mode": mode,
        "steps": steps,
        "tolerance": tol,
        "stochastic": stochastic,
    }
    if stochastic:
        case["mx_seed"] = zlib.crc32(case_id.encode()) % 100000
    case["_data"] = {"gscale": gscale, "goffset": goffset, "wscale": wscale,
                     "zero_params": list(zero_params)}
    assert all(c["id"] != case_id for c in CASES), case_id
    CASES.append(case)


def S(type_name, **args):
    return {"type": type_name, "args": args}


CLIP = dict(gscale=3.0)          # gradients large enough for clip_gradient=1.0 to bite
NAMES4 = ["fc1_weight", "fc1_bias", "bn_gamma", "bn_beta"]
SHAPES4 = [(3, 4), (4,), (4,), (4,)]
NAMES5 = ["conv0_weight", "conv0_bias", "bn0_gamma", "bn0_beta", "fc_weight"]
SHAPES5 = [(2, 3, 2), (2,), (2,), (2,), (4, 3)]


def define_cases():
    """Fill and return CASES (idempotent)."""
    del CASES[:]
    # ---------------------------------------------------------------- SGD
    add("sgd-basic", "sgd", {"learning_rate": 0.1})
    add("sgd-default-lr", "sgd", {})
    add("sgd-wd", "sgd", {"learning_rate": 0.1, "wd": 0.05})
    add("sgd-clip", "sgd", {"learning_rate": 0.1, "clip_gradient": 1.0}, **CLIP)
    add("sgd-rescale", "sgd", {"learning_rate": 0.1, "rescale_grad": 0.25})
    add("sgd-wd-clip-rescale", "sgd", {"learning_rate": 0.1, "wd": 0.05, "clip_gradient": 1.0,
                                       "rescale_grad": 0.5}, gscale=5.0)
    add("sgd-mom", "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    add("sgd-mom-wd-clip-rescale", "sgd", {"learning_rate": 0.1, "momentum": 0.8, "wd": 0.05,
                                           "clip_gradient": 1.0, "rescale_grad": 0.5}, gscale=5.0)
    add("sgd-mom-nolazy", "sgd", {"learning_rate": 0.1, "momentum": 0.9, "lazy_update": False})
    add("sgd-fp64", "sgd", {"learning_rate": 0.1, "wd": 0.05}, dtype="float64")
    add("sgd-mom-fp64", "sgd", {"learning_rate": 0.1, "momentum": 0.9, "wd": 0.05,
                                "clip_gradient": 1.0}, dtype="float64", **CLIP)
    add("sgd-fp16", "sgd", {"learning_rate": 0.1, "wd": 0.05}, dtype="float16")
    add("sgd-mom-fp16", "sgd", {"learning_rate": 0.1, "momentum": 0.9}, dtype="float16")
    add("sgd-fp16-mp", "sgd", {"learning_rate": 0.1, "wd": 0.05}, dtype="float16", mp=True)
    add("sgd-mom-fp16-mp", "sgd", {"learning_rate": 0.1, "momentum": 0.9}, dtype="float16",
        mp=True)
    add("sgd-mom-wd-clip-fp16-mp", "sgd", {"learning_rate": 0.1, "momentum": 0.9, "wd": 0.05,
                                           "clip_gradient": 1.0}, dtype="float16", mp=True, **CLIP)
    add("sgd-mp-fp32", "sgd", {"learning_rate": 0.1, "momentum": 0.9}, mp=True)
    add("sgd-list", "sgd", {"learning_rate": 0.1, "wd": 0.05}, mode="list")
    add("sgd-mom-list", "sgd", {"learning_rate": 0.1, "momentum": 0.9, "wd": 0.05,
                                "clip_gradient": 1.0, "rescale_grad": 0.5}, mode="list", gscale=5.0)
    add("sgd-list-fp16-mp", "sgd", {"learning_rate": 0.1, "wd": 0.05}, mode="list",
        dtype="float16", mp=True)
    add("sgd-mom-list-fp16-mp", "sgd", {"learning_rate": 0.1, "momentum": 0.9}, mode="list",
        dtype="float16", mp=True)
    add("sgd-mom-list-fp64", "sgd", {"learning_rate": 0.1, "momentum": 0.9}, mode="list",
        dtype="float64")
    add("sgd-mom-list-5params", "sgd", {"learning_rate": 0.1, "momentum": 0.9, "wd": 0.05},
        mode="list", shapes=SHAPES5)
    add("sgd-updater", "sgd", {"learning_rate": 0.1, "wd": 0.05}, mode="updater")
    add("sgd-mom-updater", "sgd", {"learning_rate": 0.1, "momentum": 0.9}, mode="updater")
    add("sgd-mom-updater-fp16-mp", "sgd", {"learning_rate": 0.1, "momentum": 0.9},
        mode="updater", dtype="float16", mp=True)
    add("ccsgd-basic", "ccsgd", {"learning_rate": 0.1, "wd": 0.05})
    add("ccsgd-mom-clip", "ccsgd", {"learning_rate": 0.1, "momentum": 0.9, "clip_gradient": 1.0},
        **CLIP)
    add("ccsgd-mom-list", "ccsgd", {"learning_rate": 0.1, "momentum": 0.9}, mode="list")
    add("ccsgd-fp16-mp", "ccsgd", {"learning_rate": 0.1, "momentum": 0.9}, dtype="float16",
        mp=True)

    # ---------------------------------------------------------------- NAG
    add("nag-mom0", "nag", {"learning_rate": 0.1})
    add("nag-mom0-wd-clip-rescale", "nag", {"learning_rate": 0.1, "wd": 0.05, "clip_gradient": 1.0,
                                            "rescale_grad": 0.5}, gscale=5.0)
    add("nag-mom", "nag", {"learning_rate": 0.1, "momentum": 0.9})
    add("nag-mom-wd", "nag", {"learning_rate": 0.1, "momentum": 0.9, "wd": 0.1})
    add("nag-mom-wd-clip-rescale", "nag", {"learning_rate": 0.1, "momentum": 0.7, "wd": 0.05,
                                           "clip_gradient": 1.0, "rescale_grad": 0.5}, gscale=5.0)
    add("nag-mom-fp64", "nag", {"learning_rate": 0.1, "momentum": 0.9, "wd": 0.05},
        dtype="float64")
    add("nag-mom-fp16", "nag", {"learning_rate": 0.1, "momentum": 0.9}, dtype="float16")
    add("nag-mom-fp16-mp", "nag", {"learning_rate": 0.1, "momentum": 0.9, "wd": 0.05},
        dtype="float16", mp=True)
    add("nag-mom0-fp16-mp", "nag", {"learning_rate": 0.1, "wd": 0.05}, dtype="float16", mp=True)
    add("nag-mom-updater", "nag", {"learning_rate": 0.1, "momentum": 0.9}, mode="updater")

    # ---------------------------------------------------------------- Adam
    add("adam-default", "adam", {})
    add("adam-lr", "adam", {"learning_rate": 0.1})
    add("adam-wd", "adam", {"learning_rate": 0.1, "wd": 0.1})
    add("adam-clip", "adam", {"learning_rate": 0.1, "clip_gradient": 1.0}, **CLIP)
    add("adam-wd-clip-rescale", "adam", {"learning_rate": 0.1, "wd": 0.1, "clip_gradient": 1.0,
                                         "rescale_grad": 0.5}, gscale=5.0)
    add("adam-betas-eps", "adam", {"learning_rate": 0.1, "beta1": 0.8, "beta2": 0.99,
                                   "epsilon": 1e-3})
    add("adam-nolazy", "adam", {"learning_rate": 0.1, "lazy_update": False})
    add("adam-fp64", "adam", {"learning_rate": 0.1, "wd": 0.05}, dtype="float64")
    add("adam-fp16", "adam", {"learning_rate": 0.1, "epsilon": 1e-3}, dtype="float16")
    add("adam-fp16-mp", "adam", {"learning_rate": 0.1, "wd": 0.05}, dtype="float16", mp=True)
    add("adam-updater", "adam", {"learning_rate": 0.1}, mode="updater")
    add("adam-updater-fp16-mp", "adam", {"learning_rate": 0.1}, mode="updater", dtype="float16",
        mp=True)
    add("adam-begin-num-update", "adam", {"learning_rate": 0.1, "begin_num_update": 3})

    # ---------------------------------------------------------------- AdaGrad
    add("adagrad-basic", "adagrad", {"learning_rate": 0.1})
    add("adagrad-default", "adagrad", {})
    add("adagrad-eps", "adagrad", {"learning_rate": 0.1, "eps": 0.5})
    add("adagrad-wd", "adagrad", {"learning_rate": 0.1, "wd": 0.1})
    add("adagrad-wd-clip-rescale", "adagrad", {"learning_rate": 0.1, "wd": 0.05,
                                               "clip_gradient": 1.0, "rescale_grad": 0.5},
        gscale=5.0)
    add("adagrad-fp16-mp", "adagrad", {"learning_rate": 0.1, "wd": 0.05}, dtype="float16",
        mp=True)
    add("adagrad-updater", "adagrad", {"learning_rate": 0.1}, mode="updater")

    # ---------------------------------------------------------------- AdaDelta
    add("adadelta-default", "adadelta", {})
    add("adadelta-rho-eps", "adadelta", {"rho": 0.5, "epsilon": 1e-2})
    add("adadelta-lr-ignored", "adadelta", {"learning_rate": 5.0, "epsilon": 1e-2})
    add("adadelta-wd-clip-rescale", "adadelta", {"epsilon": 1e-2, "wd": 0.1, "clip_gradient": 1.0,
                                                 "rescale_grad": 0.5}, gscale=5.0)
    add("adadelta-fp16-mp", "adadelta", {"rho": 0.8, "epsilon": 1e-2, "wd": 0.05},
        dtype="float16", mp=True)
    add("adadelta-updater", "adadelta", {"epsilon": 1e-2}, mode="updater")

    # ---------------------------------------------------------------- Adamax
    add("adamax-default", "adamax", {})
    add("adamax-lr", "adamax", {"learning_rate": 0.1})
    add("adamax-betas", "adamax", {"learning_rate": 0.1, "beta1": 0.7, "beta2": 0.9})
    add("adamax-wd-clip-rescale", "adamax", {"learning_rate": 0.1, "wd": 0.1, "clip_gradient": 1.0,
                                             "rescale_grad": 0.5}, gscale=5.0)
    add("adamax-fp64", "adamax", {"learning_rate": 0.1, "wd": 0.05}, dtype="float64")
    add("adamax-fp16", "adamax", {"learning_rate": 0.1}, dtype="float16")
    add("adamax-fp16-mp", "adamax", {"learning_rate": 0.1, "wd": 0.05}, dtype="float16", mp=True)
    add("adamax-updater", "adamax", {"learning_rate": 0.1}, mode="updater")

    # ---------------------------------------------------------------- Nadam (one parameter only:
    # MXNet shares m_schedule across parameters, a bug we fix)
    add("nadam-default", "nadam", {}, shapes=ONE)
    add("nadam-lr", "nadam", {"learning_rate": 0.1}, shapes=ONE, steps=6)
    add("nadam-schedule-decay", "nadam", {"learning_rate": 0.1, "schedule_decay": 0.1},
        shapes=ONE, steps=6)
    add("nadam-betas-eps", "nadam", {"learning_rate": 0.1, "beta1": 0.8, "beta2": 0.99,
                                     "epsilon": 1e-3}, shapes=ONE)
    add("nadam-wd-clip-rescale", "nadam", {"learning_rate": 0.1, "wd": 0.1, "clip_gradient": 1.0,
                                           "rescale_grad": 0.5}, shapes=ONE, gscale=5.0)
    add("nadam-begin-num-update", "nadam", {"learning_rate": 0.1, "begin_num_update": 5},
        shapes=ONE)
    add("nadam-fp64", "nadam", {"learning_rate": 0.1, "wd": 0.05}, shapes=[(2, 3, 2)],
        dtype="float64")
    add("nadam-fp16", "nadam", {"learning_rate": 0.1, "epsilon": 1e-3}, shapes=ONE,
        dtype="float16")
    add("nadam-fp16-mp", "nadam", {"learning_rate": 0.1}, shapes=ONE, dtype="float16", mp=True)
    add("nadam-factor", "nadam", {"learning_rate": 0.1}, shapes=ONE, steps=8,
        sched=S("FactorScheduler", step=2, factor=0.5, base_lr=0.3))
    add("nadam-updater", "nadam", {"learning_rate": 0.1}, shapes=[(5,)], mode="updater")

    # ---------------------------------------------------------------- RMSProp
    add("rmsprop-default", "rmsprop", {})
    add("rmsprop-lr-gamma1", "rmsprop", {"learning_rate": 0.05, "gamma1": 0.7, "epsilon": 1e-4})
    add("rmsprop-wd-clip-rescale", "rmsprop", {"learning_rate": 0.05, "wd": 0.1,
                                               "clip_gradient": 1.0, "rescale_grad": 0.5},
        gscale=5.0)
    add("rmsprop-clip-weights", "rmsprop", {"learning_rate": 0.05, "clip_weights": 0.8})
    add("rmsprop-centered", "rmsprop", {"learning_rate": 0.05, "centered": True})
    add("rmsprop-centered-gammas", "rmsprop", {"learning_rate": 0.05, "centered": True,
                                               "gamma1": 0.8, "gamma2": 0.5, "epsilon": 1e-4})
    add("rmsprop-centered-wd-clip-clipweights", "rmsprop",
        {"learning_rate": 0.05, "centered": True, "wd": 0.1, "clip_gradient": 1.0,
         "rescale_grad": 0.5, "clip_weights": 0.8}, gscale=5.0)
    add("rmsprop-fp16-mp", "rmsprop", {"learning_rate": 0.05, "wd": 0.05}, dtype="float16",
        mp=True)
    add("rmsprop-centered-fp16-mp", "rmsprop", {"learning_rate": 0.05, "centered": True},
        dtype="float16", mp=True)
    add("rmsprop-updater", "rmsprop", {"learning_rate": 0.05, "centered": True}, mode="updater")

    # ---------------------------------------------------------------- Ftrl
    add("ftrl-default", "ftrl", {})
    add("ftrl-lamda1-beta-lr", "ftrl", {"lamda1": 0.2, "beta": 0.5, "learning_rate": 0.5})
    add("ftrl-wd", "ftrl", {"learning_rate": 0.3, "wd": 0.2})
    add("ftrl-clip-rescale", "ftrl", {"learning_rate": 0.3, "clip_gradient": 1.0,
                                      "rescale_grad": 0.5}, gscale=5.0)
    add("ftrl-fp16-mp", "ftrl", {"learning_rate": 0.3, "lamda1": 0.05}, dtype="float16", mp=True)
    add("ftrl-factor-lr-kept", "ftrl", {"learning_rate": 0.7}, steps=8,
        sched=S("FactorScheduler", step=2, factor=0.5, base_lr=0.3))
    add("ftrl-updater", "ftrl", {"learning_rate": 0.3}, mode="updater")

    # ---------------------------------------------------------------- FTML
    add("ftml-default", "ftml", {})
    add("ftml-lr", "ftml", {"learning_rate": 0.1})
    add("ftml-betas-eps", "ftml", {"learning_rate": 0.1, "beta1": 0.8, "beta2": 0.99,
                                   "epsilon": 1e-3})
    add("ftml-wd-clip-rescale", "ftml", {"learning_rate": 0.1, "wd": 0.1, "clip_gradient": 1.0,
                                         "rescale_grad": 0.5}, gscale=5.0)
    add("ftml-fp64", "ftml", {"learning_rate": 0.1, "wd": 0.05}, dtype="float64")
    add("ftml-fp16", "ftml", {"learning_rate": 0.1, "epsilon": 1e-3}, dtype="float16")
    add("ftml-fp16-mp", "ftml", {"learning_rate": 0.1, "wd": 0.05}, dtype="float16", mp=True)
    add("ftml-updater", "ftml", {"learning_rate": 0.1}, mode="updater")

    # ---------------------------------------------------------------- DCASGD (momentum 0 only:
    # momentum > 0 crashes in MXNet)
    add("dcasgd-default", "dcasgd", {"learning_rate": 0.1})
    add("dcasgd-lamda", "dcasgd", {"learning_rate": 0.1, "lamda": 1.0}, gscale=2.0)
    add("dcasgd-wd-clip-rescale", "dcasgd", {"learning_rate": 0.1, "lamda": 0.5, "wd": 0.1,
                                             "clip_gradient": 1.0, "rescale_grad": 0.5},
        gscale=5.0)
    add("dcasgd-fp64", "dcasgd", {"learning_rate": 0.1, "lamda": 0.5, "wd": 0.05},
        dtype="float64")
    add("dcasgd-fp16", "dcasgd", {"learning_rate": 0.1, "lamda": 0.5}, dtype="float16")
    add("dcasgd-fp16-mp", "dcasgd", {"learning_rate": 0.1, "lamda": 0.5}, dtype="float16",
        mp=True)
    add("dcasgd-updater", "dcasgd", {"learning_rate": 0.1, "lamda": 0.5}, mode="updater")

    # ---------------------------------------------------------------- SGLD (stochastic)
    big = [(4000,)]
    add("sgld-basic", "sgld", {"learning_rate": 0.01}, shapes=big, goffset=5.0, gscale=10.0,
        stochastic=True)
    add("sgld-wd-clip-rescale", "sgld", {"learning_rate": 0.01, "wd": 0.5, "clip_gradient": 8.0,
                                         "rescale_grad": 0.5},
        shapes=big, goffset=5.0, gscale=10.0, wscale=3.0, stochastic=True)
    add("sgld-factor-2params", "sgld", {}, shapes=[(4000,), (50, 80)], steps=4, goffset=5.0,
        gscale=10.0, sched=S("FactorScheduler", step=2, factor=0.25, base_lr=0.02),
        stochastic=True)

    # ---------------------------------------------------------------- Signum
    add("signsgd", "signum", {"learning_rate": 0.1, "momentum": 0.0})
    add("signsgd-wd", "signum", {"learning_rate": 0.1, "momentum": 0.0, "wd": 0.1})
    # (no momentum=0 with wd_lh: MXNet passes wd_lh to signsgd_update, which rejects it)
    add("signsgd-clip-rescale", "signum", {"learning_rate": 0.1, "momentum": 0.0,
                                           "clip_gradient": 1.0, "rescale_grad": 0.5}, gscale=5.0)
    add("signsgd-fp16", "signum", {"learning_rate": 0.1, "momentum": 0.0, "wd": 0.1},
        dtype="float16")
    add("signum-default", "signum", {})
    add("signum-lr-mom", "signum", {"learning_rate": 0.1, "momentum": 0.7}, steps=6)
    add("signum-wd", "signum", {"learning_rate": 0.1, "momentum": 0.9, "wd": 0.5})
    add("signum-wd-lh", "signum", {"learning_rate": 0.1, "momentum": 0.9, "wd_lh": 0.2})
    add("signum-wd-wd-lh-clip-rescale", "signum", {"learning_rate": 0.1, "momentum": 0.9,
                                                   "wd": 0.5, "wd_lh": 0.2, "clip_gradient": 1.0,
                                                   "rescale_grad": 0.5}, gscale=5.0)
    add("signum-fp64", "signum", {"learning_rate": 0.1, "momentum": 0.9, "wd": 0.1},
        dtype="float64")
    add("signum-fp16-mp", "signum", {"learning_rate": 0.1, "momentum": 0.9, "wd_lh": 0.1},
        dtype="float16", mp=True)
    add("signum-updater", "signum", {"learning_rate": 0.1, "momentum": 0.9}, mode="updater")

    # ---------------------------------------------------------------- LAMB
    # (no single-parameter fp16 + multi_precision: MXNet never updates the fp32 master there)
    add("lamb-default", "lamb", {})
    add("lamb-lr", "lamb", {"learning_rate": 0.1})
    add("lamb-no-bias-correction", "lamb", {"learning_rate": 0.1, "bias_correction": False})
    add("lamb-betas-eps", "lamb", {"learning_rate": 0.1, "beta1": 0.8, "beta2": 0.99,
                                   "epsilon": 1e-3})
    add("lamb-wd-clip-rescale", "lamb", {"learning_rate": 0.1, "wd": 0.1, "clip_gradient": 1.0,
                                         "rescale_grad": 0.5}, gscale=5.0)
    add("lamb-lower-bound", "lamb", {"learning_rate": 0.1, "lower_bound": 4.0})
    add("lamb-upper-bound", "lamb", {"learning_rate": 0.1, "upper_bound": 1.5})
    add("lamb-bounds", "lamb", {"learning_rate": 0.1, "lower_bound": 0.5, "upper_bound": 2.5})
    add("lamb-zero-weight", "lamb", {"learning_rate": 0.1}, zero_params=(1,))
    add("lamb-zero-weight-lower-bound", "lamb", {"learning_rate": 0.1, "lower_bound": 0.5},
        zero_params=(1,))
    add("lamb-fp64", "lamb", {"learning_rate": 0.1, "wd": 0.05}, dtype="float64")
    # (no plain float16 LAMB: MXNet's all-float16 norms are ~15% away from a float32 computation)
    add("lamb-list", "lamb", {"learning_rate": 0.1, "wd": 0.05}, mode="list")
    add("lamb-list-no-bias-correction", "lamb", {"learning_rate": 0.1, "bias_correction": False},
        mode="list")
    add("lamb-list-bounds-clip-rescale", "lamb", {"learning_rate": 0.1, "lower_bound": 0.5,
                                                  "upper_bound": 2.5, "clip_gradient": 1.0,
                                                  "rescale_grad": 0.5}, mode="list", gscale=5.0)
    add("lamb-list-zero-weight", "lamb", {"learning_rate": 0.1}, mode="list", zero_params=(1,))
    add("lamb-list-fp16-mp", "lamb", {"learning_rate": 0.1, "wd": 0.05}, mode="list",
        dtype="float16", mp=True)
    add("lamb-list-bounds-fp16-mp", "lamb", {"learning_rate": 0.1, "lower_bound": 0.5,
                                             "upper_bound": 2.5, "bias_correction": False},
        mode="list", dtype="float16", mp=True)
    add("lamb-updater", "lamb", {"learning_rate": 0.1}, mode="updater")
    add("lamb-updater-fp16-mp", "lamb", {"learning_rate": 0.1}, mode="updater", dtype="float16",
        mp=True)
    add("lamb-list-names-mults", "lamb", {"learning_rate": 0.1, "wd": 0.1}, mode="list",
        shapes=SHAPES4, names=NAMES4, lr_mult=[[2, 0.5]])

    # ---------------------------------------------------------------- LARS
    add("lars-default", "lars", {"learning_rate": 0.1})
    add("lars-eta", "lars", {"learning_rate": 0.1, "eta": 0.5})
    add("lars-eta-eps-wd", "lars", {"learning_rate": 0.1, "eta": 0.5, "eps": 0.5, "wd": 0.1})
    add("lars-clip-rescale", "lars", {"learning_rate": 0.1, "eta": 0.5, "clip_gradient": 1.0,
                                      "rescale_grad": 0.5}, gscale=5.0)
    add("lars-mom", "lars", {"learning_rate": 0.1, "eta": 0.5, "momentum": 0.9})
    add("lars-mom-wd-nocorrection", "lars", {"learning_rate": 0.1, "eta": 0.5, "momentum": 0.9,
                                             "wd": 0.1, "momentum_correction": False})
    add("lars-zero-weight", "lars", {"learning_rate": 0.1, "eta": 0.5}, zero_params=(1,))
    add("lars-names", "lars", {"learning_rate": 0.1, "eta": 0.5, "wd": 0.1, "momentum": 0.9},
        shapes=SHAPES4, names=NAMES4)
    add("lars-names-list", "lars", {"learning_rate": 0.1, "eta": 0.5, "wd": 0.1, "momentum": 0.9},
        shapes=SHAPES5, names=NAMES5, mode="list")
    add("lars-names-wd-mult", "lars", {"learning_rate": 0.1, "eta": 0.5, "wd": 0.1},
        shapes=SHAPES4, names=NAMES4, wd_mult=[["bn_beta", 1.0]])
    add("lars-list", "lars", {"learning_rate": 0.1, "eta": 0.5, "wd": 0.1}, mode="list")
    add("lars-mom-list", "lars", {"learning_rate": 0.1, "eta": 0.5, "momentum": 0.9,
                                  "clip_gradient": 1.0, "rescale_grad": 0.5}, mode="list",
        gscale=5.0)
    add("lars-list-5params", "lars", {"learning_rate": 0.1, "eta": 0.5, "momentum": 0.9},
        mode="list", shapes=SHAPES5)
    add("lars-fp64", "lars", {"learning_rate": 0.1, "eta": 0.5, "momentum": 0.9, "wd": 0.05},
        dtype="float64")
    add("lars-fp16", "lars", {"learning_rate": 0.1, "eta": 1.0}, dtype="float16")
    add("lars-fp16-mp", "lars", {"learning_rate": 0.1, "eta": 0.5, "wd": 0.05}, dtype="float16",
        mp=True)
    add("lars-mom-fp16-mp", "lars", {"learning_rate": 0.1, "eta": 0.5, "momentum": 0.9},
        dtype="float16", mp=True)
    add("lars-mom-list-fp16-mp", "lars", {"learning_rate": 0.1, "eta": 0.5, "momentum": 0.9},
        mode="list", dtype="float16", mp=True)
    add("lars-updater", "lars", {"learning_rate": 0.1, "eta": 0.5, "momentum": 0.9},
        mode="updater")
    factor = S("FactorScheduler", step=2, factor=0.5, base_lr=0.2)
    add("lars-mom-correction-factor", "lars", {"eta": 0.5, "momentum": 0.9}, steps=8,
        sched=factor)
    add("lars-mom-correction-factor-list", "lars", {"eta": 0.5, "momentum": 0.9}, steps=8,
        sched=factor, mode="list")
    add("lars-mom-nocorrection-factor", "lars", {"eta": 0.5, "momentum": 0.9,
                                                 "momentum_correction": False},
        steps=8, sched=factor)
    add("lars-mom-correction-cosine-warmup", "lars", {"eta": 0.5, "momentum": 0.9}, steps=8,
        sched=S("CosineScheduler", max_update=8, base_lr=0.2, final_lr=0.01, warmup_steps=3,
                warmup_begin_lr=0.05))

    # ---------------------------------------------------------------- LBSGD
    lb = {"learning_rate": 0.1, "warmup_epochs": 1, "updates_per_epoch": 4}
    add("lbsgd-default", "lbsgd", {"learning_rate": 0.1})
    add("lbsgd-default-bs2", "lbsgd", {"learning_rate": 0.1, "batch_scale": 2}, steps=6)
    add("lbsgd-linear-bs1", "lbsgd", dict(lb, warmup_strategy="linear"), steps=6)
    add("lbsgd-linear-bs2", "lbsgd", dict(lb, warmup_strategy="linear", batch_scale=2), steps=8)
    add("lbsgd-linear-bs3-mom", "lbsgd", dict(lb, warmup_strategy="linear", batch_scale=3,
                                              momentum=0.9, updates_per_epoch=3), steps=9)
    add("lbsgd-power2-bs2", "lbsgd", dict(lb, warmup_strategy="power2", batch_scale=2,
                                          warmup_epochs=2), steps=8)
    add("lbsgd-power2-bs1", "lbsgd", dict(lb, warmup_strategy="power2"), steps=4)
    add("lbsgd-sqrt-bs2", "lbsgd", dict(lb, warmup_strategy="sqrt", batch_scale=2,
                                        warmup_epochs=2), steps=8)
    add("lbsgd-sqrt-bs1-mom", "lbsgd", dict(lb, warmup_strategy="sqrt", momentum=0.9), steps=4)
    add("lbsgd-lars-bs1", "lbsgd", dict(lb, warmup_strategy="lars"), steps=4)
    add("lbsgd-lars-bs2-mom-wd", "lbsgd", dict(lb, warmup_strategy="lars", batch_scale=2,
                                               momentum=0.9, wd=0.1), steps=6)
    add("lbsgd-begin-epoch-bs3", "lbsgd", dict(lb, warmup_strategy="linear", batch_scale=3,
                                               warmup_epochs=3, updates_per_epoch=2,
                                               begin_epoch=1), steps=8)
    add("lbsgd-wd-clip-rescale", "lbsgd", dict(lb, wd=0.1, clip_gradient=1.0, rescale_grad=0.5,
                                               momentum=0.5, batch_scale=2), steps=6, gscale=5.0)
    add("lbsgd-fp64", "lbsgd", dict(lb, momentum=0.9, batch_scale=2), steps=6, dtype="float64")
    add("lbsgd-fp16", "lbsgd", dict(lb, batch_scale=2), steps=6, dtype="float16")
    add("lbsgd-fp16-mp", "lbsgd", dict(lb, momentum=0.9, batch_scale=2), steps=6,
        dtype="float16", mp=True)
    add("lbsgd-factor-lr-before-count", "lbsgd", {"momentum": 0.9}, steps=8,
        sched=S("FactorScheduler", step=2, factor=0.5, base_lr=0.2))
    add("lbsgd-factor-one-param", "lbsgd", {"momentum": 0.9}, steps=8, shapes=ONE,
        sched=S("FactorScheduler", step=2, factor=0.5, base_lr=0.2))
    add("lbsgd-updater", "lbsgd", dict(lb, batch_scale=2), steps=6, mode="updater")

    # ---------------------------------------------------------------- Test
    add("test-basic", "test", {})
    add("test-ignores-lr-wd-clip", "test", {"learning_rate": 0.5, "wd": 0.3, "clip_gradient": 0.1,
                                            "rescale_grad": 0.5}, gscale=5.0)
    add("test-fp64", "test", {"rescale_grad": 0.5}, dtype="float64")
    add("test-fp16", "test", {"rescale_grad": 0.5}, dtype="float16")
    add("test-updater", "test", {"rescale_grad": 2.0}, mode="updater")
    add("test-begin-num-update", "test", {"rescale_grad": 0.5, "begin_num_update": 7})

    # ---------------------------------------------------------------- schedulers
    fac = S("FactorScheduler", step=2, factor=0.5, base_lr=0.2)
    add("sched-sgd-factor", "sgd", {}, steps=8, sched=fac)
    add("sched-sgd-factor-stop", "sgd", {"momentum": 0.9}, steps=8,
        sched=S("FactorScheduler", step=1, factor=0.5, base_lr=0.2, stop_factor_lr=0.03))
    add("sched-sgd-factor-warmup", "sgd", {}, steps=8,
        sched=S("FactorScheduler", step=2, factor=0.5, base_lr=0.2, warmup_steps=3,
                warmup_begin_lr=0.02))
    add("sched-sgd-factor-warmup-constant", "sgd", {}, steps=8,
        sched=S("FactorScheduler", step=2, factor=0.5, base_lr=0.2, warmup_steps=3,
                warmup_begin_lr=0.02, warmup_mode="constant"))
    add("sched-sgd-multifactor", "sgd", {"momentum": 0.9}, steps=8,
        sched=S("MultiFactorScheduler", step=[2, 5], factor=0.3, base_lr=0.2))
    add("sched-sgd-multifactor-warmup", "sgd", {}, steps=8,
        sched=S("MultiFactorScheduler", step=[4, 6], factor=0.3, base_lr=0.2, warmup_steps=3,
                warmup_begin_lr=0.05))
    add("sched-sgd-poly", "sgd", {}, steps=8,
        sched=S("PolyScheduler", max_update=6, base_lr=0.2, pwr=2, final_lr=0.01))
    add("sched-sgd-poly-warmup", "sgd", {}, steps=8,
        sched=S("PolyScheduler", max_update=7, base_lr=0.2, pwr=1, final_lr=0.0, warmup_steps=2,
                warmup_begin_lr=0.05))
    add("sched-sgd-cosine", "sgd", {}, steps=8,
        sched=S("CosineScheduler", max_update=6, base_lr=0.2, final_lr=0.005))
    add("sched-sgd-cosine-warmup-constant", "sgd", {}, steps=8,
        sched=S("CosineScheduler", max_update=7, base_lr=0.2, final_lr=0.01, warmup_steps=2,
                warmup_begin_lr=0.05, warmup_mode="constant"))
    add("sched-sgd-lr-overrides-factor", "sgd", {"learning_rate": 0.4}, steps=8, sched=fac)
    add("sched-sgd-lr-none-factor", "sgd", {"learning_rate": None}, steps=8, sched=fac)
    add("sched-sgd-begin-num-update-factor", "sgd", {"begin_num_update": 3}, steps=8, sched=fac)
    add("sched-sgd-factor-list", "sgd", {"momentum": 0.9}, steps=8, sched=fac, mode="list")
    add("sched-sgd-factor-updater", "sgd", {}, steps=8, sched=fac, mode="updater")
    add("sched-adam-factor-lr-overrides", "adam", {"learning_rate": 0.05}, steps=8, sched=fac)
    add("sched-adam-factor-lr-none", "adam", {"learning_rate": None}, steps=8, sched=fac)
    add("sched-adam-multifactor-lr-none", "adam", {"learning_rate": None}, steps=8,
        sched=S("MultiFactorScheduler", step=[3, 6], factor=0.5, base_lr=0.1))
    add("sched-adam-poly-lr-none", "adam", {"learning_rate": None}, steps=8,
        sched=S("PolyScheduler", max_update=8, base_lr=0.1, pwr=2, final_lr=0.001,
                warmup_steps=2, warmup_begin_lr=0.01))
    add("sched-adam-poly-lr-override-ignored", "adam", {"learning_rate": 0.5}, steps=8,
        sched=S("PolyScheduler", max_update=6, base_lr=0.1, pwr=2, final_lr=0.001))
    add("sched-adam-cosine-lr-none", "adam", {"learning_rate": None}, steps=8,
        sched=S("CosineScheduler", max_update=6, base_lr=0.1, final_lr=0.001))
    add("sched-adam-cosine-warmup-lr-override-ignored", "adam", {"learning_rate": 0.5}, steps=8,
        sched=S("CosineScheduler", max_update=8, base_lr=0.1, final_lr=0.001, warmup_steps=3,
                warmup_begin_lr=0.01))
    add("sched-adam-begin-num-update-cosine", "adam", {"learning_rate": None,
                                                       "begin_num_update": 2}, steps=6,
        sched=S("CosineScheduler", max_update=10, base_lr=0.1, final_lr=0.001))
    add("sched-rmsprop-factor-lr-overrides", "rmsprop", {}, steps=8, sched=fac)
    add("sched-signum-multifactor-lr-none", "signum", {"learning_rate": None, "momentum": 0.5},
        steps=8, sched=S("MultiFactorScheduler", step=[2, 5], factor=0.3, base_lr=0.2))
    add("sched-adagrad-poly", "adagrad", {}, steps=8,
        sched=S("PolyScheduler", max_update=8, base_lr=0.2, pwr=1))
    add("sched-lamb-list-cosine-lr-none", "lamb", {"learning_rate": None}, steps=8, mode="list",
        sched=S("CosineScheduler", max_update=6, base_lr=0.1, final_lr=0.001))
    add("sched-nag-factor-begin-num-update", "nag", {"momentum": 0.9, "begin_num_update": 1},
        steps=8, sched=fac)
    add("sched-ftml-multifactor", "ftml", {"learning_rate": None}, steps=8,
        sched=S("MultiFactorScheduler", step=[3, 5], factor=0.5, base_lr=0.1))
    add("sched-adamax-cosine", "adamax", {"learning_rate": None}, steps=8,
        sched=S("CosineScheduler", max_update=8, base_lr=0.1, final_lr=0.0))
    add("sched-dcasgd-factor", "dcasgd", {"lamda": 0.5}, steps=8, sched=fac)

    # ---------------------------------------------------------------- lr_mult / wd_mult
    add("mult-sgd-by-index", "sgd", {"learning_rate": 0.1, "wd": 0.1},
        lr_mult=[[0, 2.0], [2, 0.5]], wd_mult=[[1, 3.0], [2, 0.0]])
    add("mult-sgd-names-default-wd", "sgd", {"learning_rate": 0.1, "wd": 0.1, "momentum": 0.9},
        shapes=SHAPES4, names=NAMES4)
    add("mult-sgd-names-default-wd-other-suffixes", "sgd", {"learning_rate": 0.1, "wd": 0.2},
        shapes=[(3, 4), (4,), (4,), (2, 2)],
        names=["dense0_weight", "bn_running_mean", "embedding_weight_", "convgamma"])
    add("mult-sgd-by-name", "sgd", {"learning_rate": 0.1, "wd": 0.1}, shapes=SHAPES4,
        names=NAMES4, lr_mult=[["fc1_weight", 0.5], ["fc1_bias", 2.0]],
        wd_mult=[["fc1_bias", 1.0], ["bn_gamma", 3.0]])
    add("mult-sgd-index-wins-over-name", "sgd", {"learning_rate": 0.1, "wd": 0.1},
        shapes=SHAPES4, names=NAMES4,
        lr_mult=[[0, 3.0], ["fc1_weight", 0.1], ["bn_beta", 0.5]],
        wd_mult=[[1, 2.0], ["fc1_bias", 0.0], [0, 0.5], ["fc1_weight", 4.0]])
    add("mult-sgd-unknown-keys-ignored", "sgd", {"learning_rate": 0.1, "wd": 0.1},
        lr_mult=[[7, 5.0], ["nothere_weight", 5.0]], wd_mult=[[9, 5.0]])
    add("mult-sgd-mom-list-names", "sgd", {"learning_rate": 0.1, "wd": 0.1, "momentum": 0.9},
        mode="list", shapes=SHAPES4, names=NAMES4, lr_mult=[[0, 2.0], ["bn_gamma", 0.5]],
        wd_mult=[["bn_beta", 2.0]])
    add("mult-sgd-updater-names", "sgd", {"learning_rate": 0.1, "wd": 0.1}, mode="updater",
        shapes=SHAPES4, names=NAMES4, lr_mult=[["fc1_bias", 3.0]])
    add("mult-sgd-fp16-mp-names", "sgd", {"learning_rate": 0.1, "wd": 0.1, "momentum": 0.9},
        dtype="float16", mp=True, shapes=SHAPES4, names=NAMES4, lr_mult=[[1, 0.5]])
    add("mult-adam-names", "adam", {"learning_rate": 0.1, "wd": 0.1}, shapes=SHAPES4,
        names=NAMES4, lr_mult=[["bn_gamma", 0.1], [3, 2.0]], wd_mult=[["fc1_bias", 0.5]])
    add("mult-adam-factor-by-index", "adam", {"learning_rate": 0.1, "wd": 0.1}, steps=8,
        sched=S("FactorScheduler", step=2, factor=0.5, base_lr=0.1), lr_mult=[[1, 3.0]],
        wd_mult=[[0, 2.0]])
    add("mult-adagrad-names", "adagrad", {"learning_rate": 0.1, "wd": 0.1}, shapes=SHAPES4,
        names=NAMES4, lr_mult=[["fc1_weight", 2.0]])
    add("mult-adadelta-names", "adadelta", {"epsilon": 1e-2, "wd": 0.1}, shapes=SHAPES4,
        names=NAMES4, lr_mult=[["fc1_weight", 2.0]])
    add("mult-rmsprop-names", "rmsprop", {"learning_rate": 0.05, "wd": 0.1, "centered": True},
        shapes=SHAPES4, names=NAMES4, lr_mult=[[0, 0.5]])
    add("mult-ftrl-names", "ftrl", {"learning_rate": 0.3, "wd": 0.2}, shapes=SHAPES4,
        names=NAMES4, lr_mult=[["fc1_bias", 2.0]])
    add("mult-ftml-names", "ftml", {"learning_rate": 0.1, "wd": 0.1}, shapes=SHAPES4,
        names=NAMES4, lr_mult=[[2, 2.0]])
    add("mult-adamax-names", "adamax", {"learning_rate": 0.1, "wd": 0.1}, shapes=SHAPES4,
        names=NAMES4, wd_mult=[["bn_gamma", 0.5]])
    add("mult-nadam-name-bias", "nadam", {"learning_rate": 0.1, "wd": 0.3}, shapes=[(4,)],
        names=["fc1_bias"], lr_mult=[["fc1_bias", 2.0]])
    add("mult-nag-names", "nag", {"learning_rate": 0.1, "wd": 0.1, "momentum": 0.9},
        shapes=SHAPES4, names=NAMES4, lr_mult=[[3, 2.0]])
    add("mult-signum-names", "signum", {"learning_rate": 0.1, "wd": 0.3, "momentum": 0.9},
        shapes=SHAPES4, names=NAMES4, lr_mult=[["bn_beta", 2.0]])
    add("mult-dcasgd-names", "dcasgd", {"learning_rate": 0.1, "wd": 0.1, "lamda": 0.5},
        shapes=SHAPES4, names=NAMES4, lr_mult=[[0, 2.0]])
    add("mult-lamb-names", "lamb", {"learning_rate": 0.1, "wd": 0.1}, shapes=SHAPES4,
        names=NAMES4, lr_mult=[["fc1_bias", 2.0]])
    add("mult-lbsgd-names", "lbsgd", dict(lb, wd=0.1, momentum=0.9), shapes=SHAPES4,
        names=NAMES4, lr_mult=[["fc1_weight", 2.0]])
    add("mult-lars-by-index", "lars", {"learning_rate": 0.1, "eta": 0.5, "wd": 0.1},
        lr_mult=[[0, 2.0]], wd_mult=[[1, 0.0]])
    add("mult-test-names", "test", {"rescale_grad": 0.5, "wd": 0.1}, shapes=SHAPES4, names=NAMES4,
        lr_mult=[[0, 2.0]])

    # ---------------------------------------------------------------- extra cross-cutting
    add("sgd-many-shapes", "sgd", {"learning_rate": 0.1, "momentum": 0.9, "wd": 0.05},
        shapes=[(1,), (7,), (2, 2, 2, 2), (3, 1, 4), (6, 5)])
    add("adam-many-shapes", "adam", {"learning_rate": 0.1, "wd": 0.05},
        shapes=[(1,), (7,), (2, 2, 2, 2), (3, 1, 4), (6, 5)])
    add("sgd-begin-num-update", "sgd", {"learning_rate": 0.1, "begin_num_update": 10})
    add("ftml-begin-num-update", "ftml", {"learning_rate": 0.1, "begin_num_update": 2})
    add("lamb-begin-num-update", "lamb", {"learning_rate": 0.1, "begin_num_update": 2})
    add("adamax-begin-num-update", "adamax", {"learning_rate": 0.1, "begin_num_update": 2})
    return CASES
