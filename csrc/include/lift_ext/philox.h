// Philox4x32-10 counter-based generator and Box-Muller normals, shared by host and device.
//
// Stream layout (the one every kernel uses):
//   key     = (seed low 32 bits, seed high 32 bits)
//   counter = (group low, group high, offset low, offset high), group = element_index / 4
//   the four 32-bit outputs of one counter give the normals of elements 4*group .. 4*group+3
// The element index is the position in the flattened vector (for a tensor list: in the
// concatenation of the list), never a thread id, so flat buffers, tensor lists, the CPU and
// the GPU draw the same numbers.
//
// Bitwise CPU/GPU agreement: the normals use only IEEE-exact operations (+, -, *, /, sqrt,
// integer <-> float conversions), evaluated in the same order on both sides; the build turns
// off multiply-add contraction (-ffp-contract=off, nvcc --fmad=false) and fast-math. log,
// sin and cos are our own polynomials for that reason (libm and libdevice differ in the
// last bit). Accuracy against float64: a few fp32 ulps.
//
// Box-Muller tail: the radius uses a 24-bit uniform in (0, 1), so |z| <= sqrt(50 ln 2) ~ 5.89;
// the normal tail beyond that has probability 3.9e-9 per draw.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define LIFT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LIFT_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace lift_ext {

struct Philox4 {
  uint32_t v[4];
};

namespace philox_detail {

constexpr uint32_t kMul0 = 0xD2511F53u;
constexpr uint32_t kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u;
constexpr uint32_t kWeyl1 = 0xBB67AE85u;

LIFT_HOST_DEVICE void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}

LIFT_HOST_DEVICE float bits_to_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  return __builtin_bit_cast(float, bits);
#endif
}

LIFT_HOST_DEVICE uint32_t float_to_bits(float value) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(value);
#else
  return __builtin_bit_cast(uint32_t, value);
#endif
}

}  // namespace philox_detail

// Philox4x32 with 10 rounds (Salmon et al., SC'11; Random123 reference constants).
LIFT_HOST_DEVICE Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                       uint32_t k0, uint32_t k1) {
  using namespace philox_detail;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kMul0, c0, hi0, lo0);
    mulhilo(kMul1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Natural log of u in (0, 1]: u = m * 2^e with m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh(s) = 2 (s + s^3/3 + ... + s^11/11), s = (m - 1) / (m + 1), |s| <= 0.172.
LIFT_HOST_DEVICE float portable_log_unit(float u) {
  using namespace philox_detail;
  const uint32_t bits = float_to_bits(u);
  const uint32_t mantissa_bits = (bits & 0x007FFFFFu) | 0x3F800000u;  // [1, 2)
  // Fold [sqrt 2, 2) onto [sqrt(1/2), 1): the mantissa m > 1.41421356f (bits 0x3FB504F3; a
  // positive float's bits order as its value) times 0.5, which is one less in its exponent
  // bits, exactly. Integer selects only, so that loops over this function vectorise (a
  // conditional float product may not be speculated under IEEE trapping semantics).
  const uint32_t fold = mantissa_bits > 0x3FB504F3u ? 1u : 0u;
  const int exponent = static_cast<int>((bits >> 23) & 0xFFu) - 127 + static_cast<int>(fold);
  const float mantissa = bits_to_float(mantissa_bits - (fold << 23));
  const float s = (mantissa - 1.0f) / (mantissa + 1.0f);
  const float s2 = s * s;
  float poly = 1.0f / 11.0f;
  poly = poly * s2 + 1.0f / 9.0f;
  poly = poly * s2 + 1.0f / 7.0f;
  poly = poly * s2 + 1.0f / 5.0f;
  poly = poly * s2 + 1.0f / 3.0f;
  poly = poly * s2 + 1.0f;
  const float log_mantissa = 2.0f * s * poly;
  return static_cast<float>(exponent) * 0.693147180559945309f + log_mantissa;
}

// sin and cos of a in [0, pi/2) by Taylor polynomials to x^13 / x^14 (truncation < 1e-9).
LIFT_HOST_DEVICE void portable_sincos_quarter(float a, float& sin_a, float& cos_a) {
  const float a2 = a * a;
  float ps = 1.0f / 6227020800.0f;  // 1/13!
  ps = ps * a2 - 1.0f / 39916800.0f;
  ps = ps * a2 + 1.0f / 362880.0f;
  ps = ps * a2 - 1.0f / 5040.0f;
  ps = ps * a2 + 1.0f / 120.0f;
  ps = ps * a2 - 1.0f / 6.0f;
  sin_a = a + a * a2 * ps;
  float pc = 1.0f / 87178291200.0f;  // 1/14!
  pc = pc * a2 - 1.0f / 479001600.0f;
  pc = pc * a2 + 1.0f / 3628800.0f;
  pc = pc * a2 - 1.0f / 40320.0f;
  pc = pc * a2 + 1.0f / 720.0f;
  pc = pc * a2 - 1.0f / 24.0f;
  pc = pc * a2 + 0.5f;
  cos_a = 1.0f - a2 * pc;
}

// Two standard normals from two 32-bit words (Box-Muller).
// radius from r1: u = (r1 >> 8) * 2^-24 + 2^-25 in (0, 1];
// angle from r2: quadrant = top 2 bits, position in the quadrant = the next 24 bits.
LIFT_HOST_DEVICE void box_muller(uint32_t r1, uint32_t r2, float& z0, float& z1) {
  const float u = static_cast<float>(r1 >> 8) * 5.9604644775390625e-08f + 2.98023223876953125e-08f;
  const float radius = sqrtf(-2.0f * portable_log_unit(u));
  const uint32_t quadrant = r2 >> 30;
  const float fraction = static_cast<float>((r2 >> 6) & 0x00FFFFFFu) * 5.9604644775390625e-08f;
  float s, c;
  portable_sincos_quarter(fraction * 1.57079632679489662f, s, c);
  // angle = quadrant * pi/2 + a: rotate (cos a, sin a) by quadrant quarter turns.
  const float cos_t = quadrant == 0 ? c : (quadrant == 1 ? -s : (quadrant == 2 ? -c : s));
  const float sin_t = quadrant == 0 ? s : (quadrant == 1 ? c : (quadrant == 2 ? -s : -c));
  z0 = radius * cos_t;
  z1 = radius * sin_t;
}

// The four normals of element group `group` for (seed, offset).
LIFT_HOST_DEVICE void philox_normal4(uint64_t seed, uint64_t offset, uint64_t group, float out[4]) {
  const Philox4 r = philox4x32_10(static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32),
                                  static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                                  static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  box_muller(r.v[0], r.v[1], out[0], out[1]);
  box_muller(r.v[2], r.v[3], out[2], out[3]);
}

}  // namespace lift_ext
