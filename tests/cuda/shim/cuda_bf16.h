/* Host shim for running generated CUDA kernels with g++ (tests only): __nv_bfloat16 as CUDA's
   cuda_bf16.h defines it for these kernels: the top 16 bits of a float, converted from float by
   rounding to nearest even (NaN kept quiet), to float by widening. */
#pragma once
#include <stdint.h>
#include <string.h>
#include "cuda_fp16.h"
struct __nv_bfloat16 {
    uint16_t bits;
    __nv_bfloat16() : bits(0) {}
    __nv_bfloat16(float f) {
        uint32_t x;
        memcpy(&x, &f, 4);
        if ((x & 0x7fffffffu) > 0x7f800000u) { bits = (uint16_t)((x >> 16) | 0x40u); return; }
        const uint32_t lower = x & 0xffffu, kept = x >> 16;
        bits = (uint16_t)(kept + (lower > 0x8000u || (lower == 0x8000u && (kept & 1u))));
    }
    __nv_bfloat16(double d) : __nv_bfloat16(__half::odd(d)) {}
    operator float() const {
        uint32_t x = (uint32_t)bits << 16;
        float f;
        memcpy(&f, &x, 4);
        return f;
    }
};
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { __nv_bfloat16 b; b.bits = u; return b; }
