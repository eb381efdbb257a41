"""Unusual but valid specs through every backend: the NumPy kernel and the native C++ kernels
(compiled from the same IR by a different emitter) must agree. Exercises what the bundled specs
use little: elif chains over tensors, nested host branches inside a stage, tensor conditions,
bool and mod on tensors, powers, a tensor local read across a reduction, conditional states."""
import numpy as np
import pytest

import optforge
from optforge import native

pytestmark = pytest.mark.skipif(not native.available(), reason="no C++ compiler: nothing to compare with")

SPECS = {
    "branchy": """
optimizer Branchy
hyper mode: choice("a", "b", "c") = "a"
hyper k: float = 0.5 in [0, 2]
hyper momentum: float = 0.9 in [0, 1)
state mom = zeros if momentum != 0
state acc = 0.25
update {
    g = clip(grad * rescale_grad, clip_gradient)
    if mode == "a" {
        step = g * k
    } elif mode == "b" {
        if t > 2 {
            step = sign(g) * k
        } else {
            step = g ** 2 * k
        }
    } else {
        step = where(abs(g) > k, g, 0)
    }
    acc = acc + square(step)
    if momentum != 0 {
        mom = momentum * mom + step / sqrt(acc)
        step = mom
    }
    weight -= lr * step + wd * weight
}
""",
    "reducing": """
optimizer Reducing
hyper eps: float = 1e-3 in (0, 1)
state v = zeros
update {
    d = grad - weight * 0.5
    v = 0.9 * v + 0.1 * d * d
    scale = sqrt(sum(square(d)) / (norm(weight) + eps))
    big = where(scale > 1, 1 / scale, 1)
    weight = weight - lr * big * d / (sqrt(v) + eps) - lr * (weight % 0.5) * 0.01 + lr * maximum(d, 0) * (weight % 2) * 0.001
}
""",
    "mathy": """
optimizer Mathy
hyper n: int = 3 in [1, 10]
hyper flag: bool = true
update {
    a = exp(-abs(grad)) + log(1 + square(weight))
    keep = not (grad > 1 or grad < -1) and weight > -2
    p = where(keep, abs(grad) ** 1.5, 1 / n)
    q = where(flag and t % 2 == 1, p / n, p * (n % 2 + 1))
    weight = weight - lr * sign(grad) * q * a / (t + n)
}
""",
}


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("hyper", [{}, {"mode": "b"}, {"mode": "c", "momentum": 0.0}, {"clip_gradient": 0.3}])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_and_native_agree(name, hyper, dtype):
    cls = optforge.load_spec(SPECS[name])
    if name != "branchy":
        hyper = {k: v for k, v in hyper.items() if k == "clip_gradient"}
    out = []
    for backend in ("numpy", "native"):
        rng = np.random.default_rng(3)
        opt = cls(learning_rate=0.05, wd=0.01, **hyper)
        opt.backend = backend
        w = rng.standard_normal((17, 9)).astype(dtype)
        state = opt.create_state(0, w)
        for _ in range(5):
            opt.update(0, w, rng.standard_normal((17, 9)).astype(dtype), state)
        out.append((w, {k: v.copy() for k, v in state.tensors.items()}))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=tol, atol=tol)
    for k in out[0][1]:
        np.testing.assert_allclose(out[1][1][k], out[0][1][k], rtol=tol, atol=tol, err_msg=k)
