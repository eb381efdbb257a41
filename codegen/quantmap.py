"""The code tables of 8-bit blockwise states (`state m = zeros as int8(256, "dynamic")`, ir.Quant): 256
sorted float32 values, of which a stored element is the nearest to its value over its block's absmax.
The tables are data of the compiled program: rendered into the C/CUDA sources and into the class
(`state_quant`), from which the NumPy backend quantises the same way (optforge.ops.quantize)."""
from __future__ import annotations

import struct


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def dynamic(signed: bool) -> list[float]:
    """Dynamic tree quantisation (Dettmers, Lewis, Shleifer, Zettlemoyer 2022, "8-bit Optimizers via
    Block-wise Quantization", section 2; bitsandbytes' `dynamic` map): after the sign bit (signed
    tables), a run of zero bits sets a decimal exponent from 10^-6 to 10^0, an indicator bit ends it,
    and the bits left are a linear fraction in [0.1, 1]: with k fraction bits, the midpoints of 2^k
    equal bins. Unsigned tables spend the sign bit on one more fraction bit. Plus 0 and 1."""
    values = [0.0, 1.0]
    exponents = 7
    for i in range(exponents):
        bins = 2 ** i if signed else 2 ** (i + 1)
        edges = [0.1 + 0.9 * k / bins for k in range(bins + 1)]
        scale = 10.0 ** (i - (exponents - 1))
        for k in range(bins):
            mid = scale * (edges[k] + edges[k + 1]) / 2
            values.append(mid)
            if signed:
                values.append(-mid)
    assert len(values) == 256
    return sorted(_f32(v) for v in values)


def linear(signed: bool) -> list[float]:
    """Evenly spaced codes: k / 127 for k = -127 ... 127 (and -1 twice) signed, k / 255 unsigned; both
    hold 0 and the block's absmax (+-1) exactly."""
    if signed:
        return [-1.0] + [_f32(k / 127) for k in range(-127, 128)]
    return [_f32(k / 255) for k in range(256)]


def table(signed: bool, kind: str) -> list[float]:
    return (dynamic if kind == "dynamic" else linear)(signed)


def midpoints(values: list[float]) -> list[float]:
    """The 255 decision points between neighbouring codes (float32): a scaled value s is stored as
    the number of midpoints below it (the first code whose upper midpoint is >= s)."""
    return [_f32((values[k] + values[k + 1]) / 2) for k in range(len(values) - 1)]


def prefix_crowding(values: list[float]) -> int:
    """The most midpoints that lie among the floats sharing one 16-bit prefix of their bits (above
    the prefix's lowest float): the compares a prefix table lookup needs after it (op_qcode_lut)."""
    counts: dict = {}
    for m in midpoints(values):
        bits = struct.unpack("I", struct.pack("f", m))[0]
        key = bits >> 16
        low = struct.unpack("f", struct.pack("I", (key << 16) | 0xFFFF if key & 0x8000 else key << 16))[0]
        if m > low:   # (a midpoint at the prefix's lowest float is counted by the table itself)
            counts[key] = counts.get(key, 0) + 1
    return max(counts.values(), default=0)


def zero_code(values: list[float]) -> int:
    """The code of 0.0 (a zeros state starts as it)."""
    return values.index(0.0)


def c_float(x: float) -> str:
    """A float32 as a C literal that reads back exactly."""
    return f"{float(x)!r}f" if x != int(x) else f"{float(x):.1f}f"
