"""What a spec can name without declaring it, and what it may not name: the built-in values and
functions, the options, and the words reserved by Python, C and the generated code. Data only; the
checker (check.py) applies it."""
from __future__ import annotations

import builtins
import re

from .ir import Kind, Op, Ty

# ---- what a spec may read without declaring it ------------------------------------------------
# name: (op, type, kind, optional, assignable)
BUILTINS = {
    "weight": (Op.WEIGHT, Ty.FLOAT, Kind.TENSOR, False),
    "grad": (Op.GRAD, Ty.FLOAT, Kind.TENSOR, False),
    "lr": (Op.BUILTIN, Ty.FLOAT, Kind.INDEX, False),
    "wd": (Op.BUILTIN, Ty.FLOAT, Kind.INDEX, False),
    "t": (Op.BUILTIN, Ty.INT, Kind.INDEX, False),
    "param_name": (Op.BUILTIN, Ty.STR, Kind.INDEX, False),
    "learning_rate": (Op.BUILTIN, Ty.FLOAT, Kind.CALL, False),
    "num_update": (Op.BUILTIN, Ty.INT, Kind.CALL, False),
    "rescale_grad": (Op.BUILTIN, Ty.FLOAT, Kind.HYPER, False),
    "clip_gradient": (Op.BUILTIN, Ty.FLOAT, Kind.HYPER, True),
    "dtype_eps": (Op.BUILTIN, Ty.FLOAT, Kind.INDEX, False),
}
BUILTIN_DOCS = {
    "weight": "the parameter being updated (tensor)", "grad": "its gradient (tensor, read-only)",
    "lr": "learning rate of this parameter: the scheduled rate times its lr_mult",
    "wd": "weight decay of this parameter: wd times its wd_mult",
    "t": "how many times this parameter has been updated, this update included",
    "param_name": "the parameter's name from param_idx2name (its index as text otherwise)",
    "learning_rate": "the optimizer's current learning rate (scheduled), without multipliers",
    "num_update": "the largest update count over all parameters",
    "rescale_grad": "gradient rescaling factor", "clip_gradient": "gradient clipping bound or none",
    "dtype_eps": "machine epsilon of the weight's floating type (float32: 1.19e-07; the float32 master's "
                 "with multi_precision)",
}
# Names a `sparse` declaration may read besides hyperparameters (see Checker._sparse).
SPARSE_BUILTINS = {"master_copy": (Op.BUILTIN, Ty.BOOL, Kind.INDEX, False)}


# Base-class constructor arguments a spec may give a new default with `default NAME = value`.
BASE_DEFAULTS = {"learning_rate": (Ty.FLOAT, True), "wd": (Ty.FLOAT, False), "rescale_grad": (Ty.FLOAT, False),
                 "clip_gradient": (Ty.FLOAT, True), "multi_precision": (Ty.BOOL, False)}
BASE_NAMES = {"rescale_grad", "param_idx2name", "wd", "clip_gradient", "learning_rate", "lr_scheduler",
              "sym", "begin_num_update", "multi_precision", "param_dict", "max_grad_norm", "skip_nonfinite",
              "loss_scale", "skipped_steps"}

# functions: name -> (op, arity or (min, max))
FUNCTIONS = {
    "sqrt": (Op.SQRT, 1), "square": (Op.SQUARE, 1), "abs": (Op.ABS, 1), "sign": (Op.SIGN, 1),
    "exp": (Op.EXP, 1), "log": (Op.LOG, 1), "maximum": (Op.MAXIMUM, 2), "minimum": (Op.MINIMUM, 2),
    "clip": (Op.CLIP, 2), "where": (Op.WHERE, 3), "normal": (Op.NORMAL, 2), "endswith": (Op.ENDSWITH, (2, 16)),
    # reductions: of the whole tensor, or along an axis (-1: the cols, -2: the rows)
    "norm": (Op.NORM, (1, 2)), "sum": (Op.SUM, (1, 2)), "mean": (Op.MEAN, (1, 2)), "rms": (Op.RMS, (1, 2)),
    "max": (Op.MAX, (1, 2)), "min": (Op.MIN, (1, 2)),
    # reductions over every parameter of one update call (one number for all of them)
    "global_sum": (Op.GSUM, 1), "global_norm": (Op.GNORM, 1), "global_max": (Op.GMAX, 1), "global_min": (Op.GMIN, 1),
    # shape facts (host integers, per parameter)
    "ndim": (Op.NDIM, 1), "numel": (Op.NUMEL, 1), "size": (Op.SIZE, 2),
    # an operand of `@` read transposed; the identity of a square matrix value's shape
    "transpose": (Op.TRANSPOSE, 1), "eye": (Op.EYE, 1),
}
# functions added with shapes; names in specs (Adam's `mean`) may equal them: a call and a name never meet
UNRESERVED_FUNCTIONS = {"mean", "rms", "ndim", "numel", "size"}
STATE_SHAPES = ("per_row", "per_col", "per_block", "rows_x_rows", "cols_x_cols")
VIEWS = {"batched": "the last two dimensions are rows x cols, the leading ones a batch of blocks "
                    "(torch.optim.Adafactor); a vector is one row",
         "flat": "the last dimension is the cols, all the others together the rows (one block)",
         "matrix": "the first dimension is the rows, all the others together the cols (one block): "
                   "Muon's view of a conv kernel, out_channels x (in_channels * kh * kw)"}
OPTIONS = {
    # name: (number of arguments or None for any, argument type, description)
    "lr_before_count": (0, None, "read lr and wd before counting this update (LBSGD)"),
    "count_each": (0, None, "list updates count each index and read its lr in turn (LAMB)"),
    "keep_scheduler_base_lr": (0, None, "learning_rate does not overwrite the scheduler's base_lr (Ftrl)"),
    "decay_suffixes": (None, str, "parameter-name suffixes that keep weight decay under param_idx2name"),
    "aggregate": (1, int, "the Updater passes lists of up to this many same-dtype parameters per call"),
    "unused": (None, str, "hyperparameters accepted for compatibility that the update does not read"),
    "never_count": (0, None, "updates are never counted: num_update stays at begin_num_update (MXNet's Test)"),
    "carry_rows": (1, str, "under `sparse lazy`, a lazy update's rows join the following updates' rows until "
                           "the named state holds zeros in all of them again (LBSGD's summed gradients)"),
    "torch": (None, str, "the torch.optim class this spec reproduces and its constructor's arguments after `params`, in "
                         "order (`\"*\"` starts the keyword-only ones): `lr`, `weight_decay`, hyperparameters, "
                         "`torch_pairs` names and torch's flags; optforge.torch builds the drop-in class from it"),
    "host_arithmetic": (0, None, "arithmetic on hyperparameters alone (1 - beta2) is done once on the host in double "
                                 "and handed to the kernels rounded, as torch.optim does; by default the kernels "
                                 "compute it in their own type, as MXNet's do"),
    "torch_pairs": (None, str, "triples (torch name, first hyperparameter, second): torch arguments that are pairs of "
                               "hyperparameters, as Adam's betas = (beta1, beta2)"),
}
# torch.optim constructor flags an `option torch` signature may list: name -> default. The adapter
# accepts foreach and fused (optforge always runs fused kernels) and refuses capturable and
# differentiable set to true (the kernels run outside CUDA graphs and outside autograd).
TORCH_FLAGS = {"foreach": None, "fused": None, "capturable": False, "differentiable": False}
# torch names of the base arguments, in an `option torch` signature
TORCH_BASE = {"lr": "learning_rate", "weight_decay": "wd"}
STATE_INITS = ("zeros", "weight")

C_KEYWORDS = {"auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else", "enum",
              "extern", "float", "for", "goto", "if", "int", "long", "register", "return", "short", "signed",
              "sizeof", "static", "struct", "switch", "typedef", "union", "unsigned", "void", "volatile", "while",
              "bool", "true", "false", "half", "inline", "template", "class", "namespace", "new", "delete",
              "this", "operator", "private", "public", "protected", "virtual", "friend", "using", "typename"}
# Names the generated module binds (imports, method parameters and locals) and Python's builtins,
# which the emitted code calls (max, min, abs, float, bool ...): a spec name must not shadow them.
RESERVED = {"self", "np", "math", "ops", "kw", "call", "state", "tensors", "scalars", "optforge", "Optimizer",
            "HyperParam", "G", "index", "layout", "hyper", "kwargs", "zeros", "none",
            # the generated kernels' own names: Python (chunks, the backend, rows) and C
            # (the element index, template types, math functions the C emitter calls)
            "chunks", "be", "rows", "xp", "i", "gi", "T", "C", "fabs", "pow", "floor", "cos",
            "store_low", "nullptr", "int64_t", "uint64_t", "size_t"} | (set(FUNCTIONS) - UNRESERVED_FUNCTIONS) | \
    {n for n in dir(builtins) if not n.startswith("_")}
# name patterns the generated code uses: C pointers, scalar arguments, reduction terms, template
# flags, helpers, row-kernel values
RESERVED_PATTERN = re.compile(r"^(p_|k_|tab_|op_|OPTFORGE|optforge_)|^(k|red|H|B|_q)\d+$|_rows$|__absmax$")
# Attributes of a generated optimizer instance (the runtime base class and the generated class):
# hyperparameters are stored as attributes, so one of these names would overwrite them.
OPTIMIZER_ATTRS = {"spec_name", "spec_path", "spec_hash", "aliases", "hyperparams", "base_defaults", "tensor_states",
                   "scalar_states", "global_names", "options", "sparse", "create_optimizer", "create_state",
                   "create_state_multi_precision", "hyperparameters", "register", "set_learning_rate",
                   "set_lr_mult", "set_lr_scale", "set_wd_mult", "update", "update_multi_precision", "lr",
                   "num_update", "idx2name", "sym_info", "aggregate_num", "lr_mult", "wd_mult", "backend",
                   "multi_tensor", "kernel_stages", "state_layout", "state_storage", "state_quant", "stochastic_rounding", "tensor_dtype", "chunked", "host_reads_grad"}
REL = {"==": Op.EQ, "!=": Op.NE, "<": Op.LT, "<=": Op.LE, ">": Op.GT, ">=": Op.GE}
ARITH = {"+": Op.ADD, "-": Op.SUB, "*": Op.MUL, "/": Op.DIV, "%": Op.MOD, "**": Op.POW}
NEGATE = {Op.EQ: Op.NE, Op.NE: Op.EQ, Op.LT: Op.GE, Op.GE: Op.LT, Op.GT: Op.LE, Op.LE: Op.GT}
NUMERIC = (Ty.INT, Ty.FLOAT)
