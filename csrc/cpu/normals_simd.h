// What the vector paths of the CPU normals share (normals_avx2.cpp, normals_avx512.cpp): the
// Box-Muller of philox.h written out on SIMD registers, and the queue of cache lines the SGLD
// step asks for while the normals are drawn. Include it after defining LIFT_SIMD, the
// attributes of the including path's functions (its target, always_inline, inline); its code
// then compiles for that target, once per including file (an unnamed namespace).
#pragma once

#include <algorithm>
#include <cstdint>

#include "lift_ext/cpu_normals.h"
#include "lift_ext/philox.h"

#ifndef LIFT_SIMD
#error "define LIFT_SIMD (the path's target attribute, always_inline, inline) before including normals_simd.h"
#endif

namespace lift_ext {
namespace {

// box_muller (philox.h) of radius words r1[j] and angle words r2[j] on N vectors of lanes, the
// N vectors' steps and the logarithm's and the sine's and cosine's polynomials interleaved, and
// hook(0) .. hook(9) called between the steps (the caller's next Philox rounds). V names the
// vector types (F: float lanes, I: uint32 lanes, Mask: a lane predicate) and their operations.
// Exact rewrites of the header's operations, each giving the same float:
//  * u = x 2^-24 + 2^-25 (x = r1 >> 8) is (2x + 1) 2^-25 rounded once, i.e. the conversion of
//    the integer 2x + 1 = (r1 >> 7) | 1 scaled by 2^-25; the logarithm reads the exponent and
//    the mantissa of that conversion (the 2^-25 is the -25 in the exponent).
//  * the mantissa's fold m * 0.5 (m > 1.41421356f = 0x3FB504F3) is one less in its exponent.
//  * -2 log u = -2 (e ln2 + (2 s) poly) is e (-2 ln2) + (-4 s) poly: scaling by a power of
//    two commutes with rounding, so each product and the sum round to the same floats.
//  * the angle (y 2^-24) (pi/2), y = (r2 >> 6) & (2^24 - 1), is (64 y) (2^-30 pi/2), 64 y
//    being r2 with its top two and bottom six bits cleared, by the same argument.
// The integer -> float conversions are signed here and unsigned there; both are exact (or
// round once, for 2x + 1 < 2^25, as u's sum does) and equal, the values being below 2^31.
template <typename V, int N, typename Hook>
LIFT_SIMD void box_muller_steps(const typename V::I* r1, const typename V::I* r2, typename V::F* z0,
                                typename V::F* z1, Hook&& hook) {
  using F = typename V::F;
  constexpr float kLn2 = 0.693147180559945309f;
  constexpr float kHalfPiScaled = 1.57079632679489662f * 9.31322574615478515625e-10f;  // 2^-30, exact
  F m[N], e[N], s[N], s2[N], poly[N], a[N], a2[N], ps[N], pc[N];
  for (int j = 0; j < N; ++j) {
    const auto u_bits = V::as_i(V::cvt(V::or_(V::template srli<7>(r1[j]), V::splat_i(1))));
    const auto fraction = V::and_(u_bits, V::splat_i(0x007FFFFF));
    const auto fold = V::greater(fraction, V::splat_i(0x003504F3));
    m[j] = V::as_f(V::minus_where(fold, V::or_(fraction, V::splat_i(0x3F800000)), V::splat_i(0x00800000)));
    e[j] = V::cvt(V::plus_one_where(fold, V::sub_i(V::template srli<23>(u_bits), V::splat_i(127 + 25))));
    a[j] = V::mul(V::cvt(V::and_(r2[j], V::splat_i(0x3FFFFFC0))), V::splat_f(kHalfPiScaled));
  }
  hook(0);
  for (int j = 0; j < N; ++j) {
    s[j] = V::div(V::sub(m[j], V::splat_f(1.0f)), V::add(m[j], V::splat_f(1.0f)));
    a2[j] = V::mul(a[j], a[j]);
  }
  hook(1);
  for (int j = 0; j < N; ++j) {
    ps[j] = V::sub(V::mul(V::splat_f(1.0f / 6227020800.0f), a2[j]), V::splat_f(1.0f / 39916800.0f));
    pc[j] = V::sub(V::mul(V::splat_f(1.0f / 87178291200.0f), a2[j]), V::splat_f(1.0f / 479001600.0f));
  }
  for (int j = 0; j < N; ++j) {
    ps[j] = V::add(V::mul(ps[j], a2[j]), V::splat_f(1.0f / 362880.0f));
    pc[j] = V::add(V::mul(pc[j], a2[j]), V::splat_f(1.0f / 3628800.0f));
  }
  hook(2);
  for (int j = 0; j < N; ++j) {
    s2[j] = V::mul(s[j], s[j]);
    ps[j] = V::sub(V::mul(ps[j], a2[j]), V::splat_f(1.0f / 5040.0f));
    pc[j] = V::sub(V::mul(pc[j], a2[j]), V::splat_f(1.0f / 40320.0f));
  }
  hook(3);
  for (int j = 0; j < N; ++j) {
    poly[j] = V::add(V::mul(V::splat_f(1.0f / 11.0f), s2[j]), V::splat_f(1.0f / 9.0f));
    ps[j] = V::add(V::mul(ps[j], a2[j]), V::splat_f(1.0f / 120.0f));
    pc[j] = V::add(V::mul(pc[j], a2[j]), V::splat_f(1.0f / 720.0f));
  }
  hook(4);
  for (int j = 0; j < N; ++j) {
    poly[j] = V::add(V::mul(poly[j], s2[j]), V::splat_f(1.0f / 7.0f));
    ps[j] = V::sub(V::mul(ps[j], a2[j]), V::splat_f(1.0f / 6.0f));
    pc[j] = V::sub(V::mul(pc[j], a2[j]), V::splat_f(1.0f / 24.0f));
  }
  hook(5);
  for (int j = 0; j < N; ++j) {
    poly[j] = V::add(V::mul(poly[j], s2[j]), V::splat_f(1.0f / 5.0f));
    pc[j] = V::add(V::mul(pc[j], a2[j]), V::splat_f(0.5f));
  }
  hook(6);
  for (int j = 0; j < N; ++j) poly[j] = V::add(V::mul(poly[j], s2[j]), V::splat_f(1.0f / 3.0f));
  hook(7);
  for (int j = 0; j < N; ++j) poly[j] = V::add(V::mul(poly[j], s2[j]), V::splat_f(1.0f));
  hook(8);
  for (int j = 0; j < N; ++j) {
    const F radius = V::sqrt(V::add(V::mul(e[j], V::splat_f(-2.0f * kLn2)), V::mul(V::mul(s[j], V::splat_f(-4.0f)), poly[j])));
    const F sin_a = V::add(a[j], V::mul(V::mul(a[j], a2[j]), ps[j]));
    const F cos_a = V::sub(V::splat_f(1.0f), V::mul(a2[j], pc[j]));
    // Quadrant q = r2 >> 30: (cos t, sin t) = (c, s), (-s, c), (-c, -s), (s, -c) for q = 0..3,
    // i.e. swap c and s when bit 30 is set, negate the cosine when bits 31 and 30 differ and
    // the sine when bit 31 is set (negation flips the sign bit, as the scalar code's does).
    const auto r2_shl = V::add_i(r2[j], r2[j]);  // bit 30 moved to the sign bit
    const F cos_abs = V::select_by_sign(r2_shl, cos_a, sin_a);
    const F sin_abs = V::select_by_sign(r2_shl, sin_a, cos_a);
    const auto sign = V::splat_i(0x80000000u);
    const auto cos_sign = V::and_(V::xor_(r2[j], r2_shl), sign);
    const auto sin_sign = V::and_(r2[j], sign);
    z0[j] = V::mul(radius, V::xor_sign(cos_abs, cos_sign));
    z1[j] = V::mul(radius, V::xor_sign(sin_abs, sin_sign));
  }
  hook(9);
}

// The ten Philox rounds' keys (philox4x32_10 in philox.h) of `seed`, broadcast once per call.
template <typename V>
struct RoundKeys {
  typename V::I k0[10], k1[10];
};

template <typename V>
LIFT_SIMD void set_round_keys(uint64_t seed, RoundKeys<V>& keys) {
  using namespace philox_detail;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    keys.k0[round] = V::splat_i(k0);
    keys.k1[round] = V::splat_i(k1);
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
}

// The cache lines of `prefetch`'s arrays for the first `normals` normals, in the order the
// update reads them (line by line, the arrays taken in turn); a path's loop requests one at
// each of its request points.
struct LineQueue {
  static constexpr uintptr_t kLine = 64;
  uintptr_t first[NormalsPrefetch::kMaxArrays], end[NormalsPrefetch::kMaxArrays];
  uintptr_t offset = 0, span = 0;  // bytes past each array's first line; the longest array's
  int arrays = 0, array = 0;

  LineQueue(const NormalsPrefetch& rows, int64_t normals) : arrays(rows.arrays) {
    const int64_t count = std::min(rows.count, normals);
    for (int a = 0; a < arrays; ++a) {
      first[a] = rows.address[a] & ~(kLine - 1);
      end[a] = rows.address[a] + static_cast<uintptr_t>(count * rows.element_bytes[a]);
      span = std::max(span, end[a] - first[a]);
    }
    if (count <= 0) array = arrays;
  }
  void request() {
    if (array == arrays) return;  // none, or all requested
    const uintptr_t line = first[array] + offset;
    if (line < end[array]) __builtin_prefetch(reinterpret_cast<const void*>(line));
    if (++array == arrays) {
      offset += kLine;
      array = offset < span ? 0 : arrays;
    }
  }
};

// LineQueue's stand-in when nothing is to be requested.
struct NoLines {
  void request() {}
};

// The requests of a path's loop for the first `normals` normals: `prefetch`'s lines where one
// is given (kPrefetch; without, the loop compiles as if requests did not exist).
template <bool kPrefetch>
__attribute__((always_inline)) inline auto row_queue(const NormalsPrefetch* prefetch, int64_t normals) {
  if constexpr (kPrefetch) return LineQueue(*prefetch, normals);
  else return NoLines{};
}

}  // namespace
}  // namespace lift_ext
