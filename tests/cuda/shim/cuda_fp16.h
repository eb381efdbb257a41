/* Host shim for running generated CUDA kernels with g++ (tests only): the CUDA built-ins the
   kernels use, a one-thread launch geometry, and an IEEE binary16 __half. */
#pragma once
#include <stdint.h>
#include <string.h>
#define __global__
#define __host__
#define __device__
struct optforge_dim3 { unsigned x, y, z; };
extern "C" {
optforge_dim3 blockIdx = {0, 0, 0}, threadIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
}
struct __half {
    uint16_t bits;
    __half() : bits(0) {}
    __half(float f) { bits = from_float(f); }
    __half(double d) { bits = from_float(odd(d)); }   /* as __double2half: one rounding of the double */
    static float odd(double d) {   /* the float rounding to 16 bits as d does: rounded to odd */
        float f = (float)d;
        if ((double)f != d && f == f) {
            uint32_t u; memcpy(&u, &f, 4);
            if ((f < 0 ? -f : f) > (d < 0 ? -d : d)) u -= 1;
            u |= 1u; memcpy(&f, &u, 4);
        }
        return f;
    }
    operator float() const { return to_float(bits); }
    static uint16_t from_float(float f) {
        uint32_t x; memcpy(&x, &f, 4);
        uint32_t sign = (x >> 16) & 0x8000u, exp = (x >> 23) & 0xffu, man = x & 0x7fffffu;
        if (exp == 0xffu) return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0u));
        int e = (int)exp - 127 + 15;
        if (e >= 0x1f) return (uint16_t)(sign | 0x7c00u);
        if (e <= 0) {
            if (e < -10) return (uint16_t)sign;
            man |= 0x800000u;
            int shift = 14 - e;
            uint32_t half = man >> shift, rem = man & ((1u << shift) - 1u), mid = 1u << (shift - 1);
            if (rem > mid || (rem == mid && (half & 1u))) half++;
            return (uint16_t)(sign | half);
        }
        uint32_t half = ((uint32_t)e << 10) | (man >> 13), rem = man & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) half++;
        return (uint16_t)(sign | half);
    }
    static float to_float(uint16_t h) {
        uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, x;
        if (exp == 0) {
            if (man == 0) x = sign;
            else { int e = -1; do { man <<= 1; e++; } while (!(man & 0x400u)); x = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13); }
        } else if (exp == 0x1f) x = sign | 0x7f800000u | (man << 13);
        else x = sign | ((exp + 127 - 15) << 23) | (man << 13);
        float f; memcpy(&f, &x, 4); return f;
    }
};
inline __half __float2half(float f) { return __half(f); }
