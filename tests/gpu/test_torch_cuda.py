"""optforge.torch on CUDA tensors: the kernels run through zero-copy CuPy views (DLPack) on torch's
current stream and must give what the same optimizer gives on CPU tensors. Needs torch built with
CUDA, CuPy and a device."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu import require_cupy  # noqa: E402

cupy = require_cupy()
torch = pytest.importorskip("torch", reason="torch is not installed")
if not torch.cuda.is_available():
    pytest.skip("torch has no CUDA device here (CPU build, or no GPU)", allow_module_level=True)
from optforge.torch import Optimizer  # noqa: E402


def _train(device, spec, kw, sparse=False, steps=4):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 8, sparse=sparse)
    lin = torch.nn.Linear(8, 3)
    model = torch.nn.Sequential(emb, lin).to(device)
    opt = Optimizer(model.parameters(), spec, **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, 50, (16,), generator=g).to(device)
        target = torch.randn(16, 3, generator=g).to(device)
        loss = ((model(idx) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return [p.detach().cpu().numpy() for p in model.parameters()], opt


@pytest.mark.parametrize("spec,kw,sparse", [
    ("adam", dict(lr=0.01, weight_decay=0.01), False),
    ("lamb", dict(lr=0.01, weight_decay=0.01), False),
    ("lars", dict(lr=0.1, momentum=0.9, eta=0.01), False),
    ("adam", dict(lr=0.01), True),            # lazy rows from a sparse Embedding gradient
    ("sgd", dict(lr=0.1, momentum=0.9), True),
])
def test_cuda_tensors_match_cpu_tensors(spec, kw, sparse):
    want, _ = _train("cpu", spec, kw, sparse)
    got, opt = _train("cuda", spec, kw, sparse)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    state = next(iter(opt.state.values()))
    assert all(v.device.type == "cuda" for v in state.values() if isinstance(v, torch.Tensor))


def test_state_dict_moves_between_devices():
    _, opt = _train("cuda", "adam", dict(lr=0.01))
    sd = opt.state_dict()
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 3))
    cpu_opt = Optimizer(model.parameters(), "adam", lr=0.01)
    cpu_opt.load_state_dict(sd)
    state = next(iter(cpu_opt.state.values()))
    assert all(v.device.type == "cpu" for v in state.values() if isinstance(v, torch.Tensor))
