"""What every GPU test module starts with: CuPy and a CUDA device, or a skip that says which is
missing. Under tests/cuda/fakecupy (a host stand-in for CuPy, see tests/test_cuda_runtime_host.py)
the same tests run on the CPU."""
import pytest


def require_cupy():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install optforge[cuda]); "
                                              "GPU tests skipped")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001 - no driver, no device
        pytest.skip(f"no usable CUDA device: {e}", allow_module_level=True)
    if count == 0:
        pytest.skip("no CUDA device", allow_module_level=True)
    return cupy
