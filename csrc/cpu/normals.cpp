// Philox normals for the CPU kernels (see lift_ext/cpu_normals.h): a portable path and, on
// x86-64, AVX-512F and AVX2 paths, all bitwise equal to philox_normal4 (philox.h). The path is
// picked once per process from the CPU's features (normals_isa).
#include "lift_ext/cpu_normals.h"

#include <algorithm>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "lift_ext/philox.h"

namespace lift_ext {
namespace {
constexpr int kLanes = 16;  // element groups generated together, one SIMD lane each

// Box-Muller of kLanes groups' Philox words (w0..w3 per lane) and the interleaved store of
// the first `lanes` groups' four normals. Inlined into the portable and AVX-512 paths; the
// compiler vectorises it for AVX-512 only (the AVX2 path has its own, box_muller8).
__attribute__((always_inline)) inline void store_normals(const uint32_t* w0, const uint32_t* w1,
                                                         const uint32_t* w2, const uint32_t* w3,
                                                         int64_t lanes, float* __restrict out) {
  float z0[kLanes], z1[kLanes], z2[kLanes], z3[kLanes];
#pragma omp simd
  for (int l = 0; l < kLanes; ++l) {
    box_muller(w0[l], w1[l], z0[l], z1[l]);
    box_muller(w2[l], w3[l], z2[l], z3[l]);
  }
  for (int64_t l = 0; l < lanes; ++l) {
    out[4 * l + 0] = z0[l];
    out[4 * l + 1] = z1[l];
    out[4 * l + 2] = z2[l];
    out[4 * l + 3] = z3[l];
  }
}
}  // namespace

// Portable path, compiled for the baseline instruction set: structure-of-arrays over kLanes
// groups so that the Philox loops map onto SIMD lanes where the compiler can vectorise them.
void fill_normals_generic(uint64_t seed, uint64_t offset, uint64_t first_group,
                          int64_t num_groups, float* __restrict out) {
  using namespace philox_detail;
  for (int64_t j0 = 0; j0 < num_groups; j0 += kLanes) {
    uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const uint64_t group = first_group + static_cast<uint64_t>(j0 + l);
      c0[l] = static_cast<uint32_t>(group);
      c1[l] = static_cast<uint32_t>(group >> 32);
      c2[l] = static_cast<uint32_t>(offset);
      c3[l] = static_cast<uint32_t>(offset >> 32);
    }
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) {
        const uint64_t p0 = static_cast<uint64_t>(kMul0) * c0[l];
        const uint64_t p1 = static_cast<uint64_t>(kMul1) * c2[l];
        const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[l] ^ k0;
        const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[l] ^ k1;
        c1[l] = static_cast<uint32_t>(p1);
        c3[l] = static_cast<uint32_t>(p0);
        c0[l] = n0;
        c2[l] = n2;
      }
      k0 += kWeyl0;
      k1 += kWeyl1;
    }
    store_normals(c0, c1, c2, c3, std::min<int64_t>(kLanes, num_groups - j0), out + 4 * j0);
  }
}

#if defined(__x86_64__)
// GCC 12's avx512fintrin.h seeds the shift intrinsics with an "undefined" vector and then
// warns about it (-Wmaybe-uninitialized), a false positive inside the header.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// The same stream with the Philox rounds written for AVX-512F: the compiler turns the
// portable 32x32->64 multiplies into a full 64-bit multiply emulation (three vpmuludq per
// product); here each is two vpmuludq (even and odd lanes) and a blend. Box-Muller is the
// header's code, vectorised by the compiler in this AVX-512 function: same operations in
// the same order (no contraction), so the normals are bitwise those of philox_normal4.
__attribute__((target("avx512f")))
void fill_normals_avx512(uint64_t seed, uint64_t offset, uint64_t first_group,
                         int64_t num_groups, float* __restrict out) {
  using namespace philox_detail;
  static_assert(kLanes == 16, "one zmm register of uint32 lanes");
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i mul0 = _mm512_set1_epi32(static_cast<int>(kMul0));
  const __m512i mul1 = _mm512_set1_epi32(static_cast<int>(kMul1));
  const __m512i off_lo = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
  const __m512i off_hi = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset >> 32)));
  constexpr __mmask16 kOdd = 0xAAAA;
  alignas(64) uint32_t w0[kLanes], w1[kLanes], w2[kLanes], w3[kLanes];
  for (int64_t j0 = 0; j0 < num_groups; j0 += kLanes) {
    const uint64_t base = first_group + static_cast<uint64_t>(j0);
    // group = base + lane as (low, high) words; the low word carries when it wraps.
    __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base))), lane);
    const __mmask16 carry = _mm512_cmplt_epu32_mask(c0, lane);
    __m512i c1 = _mm512_mask_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base >> 32))),
                                       carry,
                                       _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base >> 32))),
                                       _mm512_set1_epi32(1));
    __m512i c2 = off_lo, c3 = off_hi;
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      const __m512i e0 = _mm512_mul_epu32(c0, mul0);                          // even lanes
      const __m512i o0 = _mm512_mul_epu32(_mm512_srli_epi64(c0, 32), mul0);   // odd lanes
      const __m512i e1 = _mm512_mul_epu32(c2, mul1);
      const __m512i o1 = _mm512_mul_epu32(_mm512_srli_epi64(c2, 32), mul1);
      const __m512i hi0 = _mm512_mask_blend_epi32(kOdd, _mm512_srli_epi64(e0, 32), o0);
      const __m512i lo0 = _mm512_mask_blend_epi32(kOdd, e0, _mm512_slli_epi64(o0, 32));
      const __m512i hi1 = _mm512_mask_blend_epi32(kOdd, _mm512_srli_epi64(e1, 32), o1);
      const __m512i lo1 = _mm512_mask_blend_epi32(kOdd, e1, _mm512_slli_epi64(o1, 32));
      // 0x96: a ^ b ^ c
      c0 = _mm512_ternarylogic_epi32(hi1, c1, _mm512_set1_epi32(static_cast<int>(k0)), 0x96);
      c2 = _mm512_ternarylogic_epi32(hi0, c3, _mm512_set1_epi32(static_cast<int>(k1)), 0x96);
      c1 = lo1;
      c3 = lo0;
      k0 += kWeyl0;
      k1 += kWeyl1;
    }
    _mm512_store_si512(w0, c0);
    _mm512_store_si512(w1, c1);
    _mm512_store_si512(w2, c2);
    _mm512_store_si512(w3, c3);
    store_normals(w0, w1, w2, w3, std::min<int64_t>(kLanes, num_groups - j0), out + 4 * j0);
  }
}
#pragma GCC diagnostic pop
#endif

#if defined(__x86_64__)
// The same stream with AVX2 intrinsics, 8 groups per 256-bit vector and two vectors (kLanes
// groups) per iteration. AVX2 has neither unsigned integer -> float conversion nor masked
// operations, so the compiler leaves the header's Box-Muller scalar for AVX2; here it is
// written out with the header's operations in the header's order (no FMA: the target is
// "avx2" alone), so every normal is bitwise that of philox_normal4.
namespace {
#define LIFT_AVX2 __attribute__((target("avx2"), always_inline)) inline

LIFT_AVX2 __m256i splat_u32(uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
LIFT_AVX2 __m256 splat_f32(float v) { return _mm256_set1_ps(v); }

// 8 groups' Philox state: word k of lane l is w[k][l].
struct Philox8 {
  __m256i w[4];
};

// Counters (group low, group high, offset low, offset high) of groups base .. base + 7, the
// low word's carry into the high word included.
LIFT_AVX2 Philox8 counters8(uint64_t base, uint64_t offset) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i lo = _mm256_add_epi32(splat_u32(static_cast<uint32_t>(base)), lane);
  // the low word wrapped in a lane iff lo < lane (unsigned), i.e. max(lo, lane) != lo
  const __m256i no_carry = _mm256_cmpeq_epi32(_mm256_max_epu32(lo, lane), lo);
  const __m256i carry = _mm256_xor_si256(no_carry, _mm256_set1_epi32(-1));  // -1 where wrapped
  const __m256i hi = _mm256_sub_epi32(splat_u32(static_cast<uint32_t>(base >> 32)), carry);
  return Philox8{{lo, hi, splat_u32(static_cast<uint32_t>(offset)),
                  splat_u32(static_cast<uint32_t>(offset >> 32))}};
}

// (hi, lo) 32-bit halves of the 64-bit products a * m, per 32-bit lane: vpmuludq multiplies
// the even lanes, and the odd lanes after shifting them down; blends put the halves together.
LIFT_AVX2 void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// One Philox4x32 round with round keys k0, k1 (philox4x32_10 in philox.h).
LIFT_AVX2 void philox_round8(Philox8& c, __m256i k0, __m256i k1) {
  using namespace philox_detail;
  __m256i hi0, lo0, hi1, lo1;
  mulhilo8(c.w[0], splat_u32(kMul0), hi0, lo0);
  mulhilo8(c.w[2], splat_u32(kMul1), hi1, lo1);
  c.w[0] = _mm256_xor_si256(_mm256_xor_si256(hi1, c.w[1]), k0);
  c.w[1] = lo1;
  c.w[2] = _mm256_xor_si256(_mm256_xor_si256(hi0, c.w[3]), k1);
  c.w[3] = lo0;
}

// portable_log_unit (philox.h) on 8 lanes.
LIFT_AVX2 __m256 log_unit8(__m256 u) {
  const __m256i bits = _mm256_castps_si256(u);
  __m256i exponent = _mm256_sub_epi32(
      _mm256_and_si256(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(0xFF)), _mm256_set1_epi32(127));
  __m256 mantissa = _mm256_castsi256_ps(_mm256_or_si256(
      _mm256_and_si256(bits, _mm256_set1_epi32(0x007FFFFF)), _mm256_set1_epi32(0x3F800000)));
  const __m256 fold = _mm256_cmp_ps(mantissa, splat_f32(1.41421356f), _CMP_GT_OQ);
  mantissa = _mm256_blendv_ps(mantissa, _mm256_mul_ps(mantissa, splat_f32(0.5f)), fold);
  exponent = _mm256_sub_epi32(exponent, _mm256_castps_si256(fold));  // fold is -1: +1
  const __m256 s = _mm256_div_ps(_mm256_sub_ps(mantissa, splat_f32(1.0f)),
                                 _mm256_add_ps(mantissa, splat_f32(1.0f)));
  const __m256 s2 = _mm256_mul_ps(s, s);
  __m256 poly = splat_f32(1.0f / 11.0f);
  poly = _mm256_add_ps(_mm256_mul_ps(poly, s2), splat_f32(1.0f / 9.0f));
  poly = _mm256_add_ps(_mm256_mul_ps(poly, s2), splat_f32(1.0f / 7.0f));
  poly = _mm256_add_ps(_mm256_mul_ps(poly, s2), splat_f32(1.0f / 5.0f));
  poly = _mm256_add_ps(_mm256_mul_ps(poly, s2), splat_f32(1.0f / 3.0f));
  poly = _mm256_add_ps(_mm256_mul_ps(poly, s2), splat_f32(1.0f));
  const __m256 log_mantissa = _mm256_mul_ps(_mm256_mul_ps(splat_f32(2.0f), s), poly);
  return _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(exponent), splat_f32(0.693147180559945309f)),
                       log_mantissa);
}

// portable_sincos_quarter (philox.h) on 8 lanes.
LIFT_AVX2 void sincos_quarter8(__m256 a, __m256& sin_a, __m256& cos_a) {
  const __m256 a2 = _mm256_mul_ps(a, a);
  __m256 ps = splat_f32(1.0f / 6227020800.0f);
  ps = _mm256_sub_ps(_mm256_mul_ps(ps, a2), splat_f32(1.0f / 39916800.0f));
  ps = _mm256_add_ps(_mm256_mul_ps(ps, a2), splat_f32(1.0f / 362880.0f));
  ps = _mm256_sub_ps(_mm256_mul_ps(ps, a2), splat_f32(1.0f / 5040.0f));
  ps = _mm256_add_ps(_mm256_mul_ps(ps, a2), splat_f32(1.0f / 120.0f));
  ps = _mm256_sub_ps(_mm256_mul_ps(ps, a2), splat_f32(1.0f / 6.0f));
  sin_a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_mul_ps(a, a2), ps));
  __m256 pc = splat_f32(1.0f / 87178291200.0f);
  pc = _mm256_sub_ps(_mm256_mul_ps(pc, a2), splat_f32(1.0f / 479001600.0f));
  pc = _mm256_add_ps(_mm256_mul_ps(pc, a2), splat_f32(1.0f / 3628800.0f));
  pc = _mm256_sub_ps(_mm256_mul_ps(pc, a2), splat_f32(1.0f / 40320.0f));
  pc = _mm256_add_ps(_mm256_mul_ps(pc, a2), splat_f32(1.0f / 720.0f));
  pc = _mm256_sub_ps(_mm256_mul_ps(pc, a2), splat_f32(1.0f / 24.0f));
  pc = _mm256_add_ps(_mm256_mul_ps(pc, a2), splat_f32(0.5f));
  cos_a = _mm256_sub_ps(splat_f32(1.0f), _mm256_mul_ps(a2, pc));
}

// box_muller (philox.h) on 8 lanes. The integer -> float conversions are signed here and
// unsigned there; both are exact and equal, since the converted values are below 2^24.
LIFT_AVX2 void box_muller8(__m256i r1, __m256i r2, __m256& z0, __m256& z1) {
  const __m256 u = _mm256_add_ps(
      _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(r1, 8)), splat_f32(5.9604644775390625e-08f)),
      splat_f32(2.98023223876953125e-08f));
  const __m256 radius = _mm256_sqrt_ps(_mm256_mul_ps(splat_f32(-2.0f), log_unit8(u)));
  const __m256 fraction = _mm256_mul_ps(
      _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(r2, 6), _mm256_set1_epi32(0x00FFFFFF))),
      splat_f32(5.9604644775390625e-08f));
  __m256 s, c;
  sincos_quarter8(_mm256_mul_ps(fraction, splat_f32(1.57079632679489662f)), s, c);
  // Quadrant q = r2 >> 30: (cos t, sin t) = (c, s), (-s, c), (-c, -s), (s, -c) for q = 0..3,
  // i.e. swap c and s when bit 30 is set, negate the cosine when bits 31 and 30 differ and
  // the sine when bit 31 is set (negation flips the sign bit, as the scalar code's does).
  const __m256i r2_shl = _mm256_slli_epi32(r2, 1);  // bit 30 moved to the sign bit
  const __m256 odd = _mm256_castsi256_ps(r2_shl);
  const __m256 cos_abs = _mm256_blendv_ps(c, s, odd);
  const __m256 sin_abs = _mm256_blendv_ps(s, c, odd);
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256 cos_sign = _mm256_castsi256_ps(_mm256_and_si256(_mm256_xor_si256(r2, r2_shl), sign));
  const __m256 sin_sign = _mm256_castsi256_ps(_mm256_and_si256(r2, sign));
  z0 = _mm256_mul_ps(radius, _mm256_xor_ps(cos_abs, cos_sign));
  z1 = _mm256_mul_ps(radius, _mm256_xor_ps(sin_abs, sin_sign));
}

// The four normals of 8 groups, group-interleaved: out[4 l + k] = z_k[l] for l < lanes. A 4 x 8
// transpose in registers; a partial vector (lanes < 8) goes through a buffer.
LIFT_AVX2 void store_normals8(const Philox8& r, int64_t lanes, float* out) {
  __m256 z0, z1, z2, z3;
  box_muller8(r.w[0], r.w[1], z0, z1);
  box_muller8(r.w[2], r.w[3], z2, z3);
  // pairs: t0 = (z0 z1) of lanes 0,1 | 4,5; t1 = lanes 2,3 | 6,7; t2, t3 the same for (z2 z3)
  const __m256 t0 = _mm256_unpacklo_ps(z0, z1), t1 = _mm256_unpackhi_ps(z0, z1);
  const __m256 t2 = _mm256_unpacklo_ps(z2, z3), t3 = _mm256_unpackhi_ps(z2, z3);
  // quads: g0 = group 0 | group 4, g1 = 1 | 5, g2 = 2 | 6, g3 = 3 | 7
  const __m256 g0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 g1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 g2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 g3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 groups[4] = {_mm256_permute2f128_ps(g0, g1, 0x20), _mm256_permute2f128_ps(g2, g3, 0x20),
                            _mm256_permute2f128_ps(g0, g1, 0x31), _mm256_permute2f128_ps(g2, g3, 0x31)};
  if (lanes >= 8) {
    for (int k = 0; k < 4; ++k) _mm256_storeu_ps(out + 8 * k, groups[k]);
    return;
  }
  alignas(32) float buf[32];
  for (int k = 0; k < 4; ++k) _mm256_store_ps(buf + 8 * k, groups[k]);
  std::copy(buf, buf + 4 * lanes, out);
}
#undef LIFT_AVX2
}  // namespace

__attribute__((target("avx2")))
void fill_normals_avx2(uint64_t seed, uint64_t offset, uint64_t first_group, int64_t num_groups,
                       float* __restrict out) {
  using namespace philox_detail;
  static_assert(kLanes == 16, "two ymm registers of uint32 lanes");
  // the ten rounds' keys, broadcast once per call
  __m256i key0[10], key1[10];
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    key0[round] = splat_u32(k0);
    key1[round] = splat_u32(k1);
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  for (int64_t j0 = 0; j0 < num_groups; j0 += kLanes) {
    // two independent 8-group states, so one's multiplies overlap the other's latency
    const uint64_t base = first_group + static_cast<uint64_t>(j0);
    Philox8 a = counters8(base, offset);
    Philox8 b = counters8(base + 8, offset);
    for (int round = 0; round < 10; ++round) {
      philox_round8(a, key0[round], key1[round]);
      philox_round8(b, key0[round], key1[round]);
    }
    const int64_t lanes = std::min<int64_t>(kLanes, num_groups - j0);
    store_normals8(a, std::min<int64_t>(lanes, 8), out + 4 * j0);
    if (lanes > 8) store_normals8(b, lanes - 8, out + 4 * (j0 + 8));
  }
}
#endif

namespace {
// Whether the CPU runs `isa`, asked once per path.
bool cpu_runs(NormalsIsa isa) {
  switch (isa) {
    case NormalsIsa::kGeneric:
      return true;
#if defined(__x86_64__)
    case NormalsIsa::kAvx2: {
      static const bool avx2 = (__builtin_cpu_init(), __builtin_cpu_supports("avx2"));
      return avx2;
    }
    case NormalsIsa::kAvx512: {
      static const bool avx512 = (__builtin_cpu_init(), __builtin_cpu_supports("avx512f"));
      return avx512;
    }
#endif
    default:
      return false;
  }
}
}  // namespace

const char* normals_isa_name(NormalsIsa isa) {
  switch (isa) {
    case NormalsIsa::kAvx2:
      return "avx2";
    case NormalsIsa::kAvx512:
      return "avx512";
    default:
      return "generic";
  }
}

bool normals_isa_supported(NormalsIsa isa) { return cpu_runs(isa); }

NormalsIsa normals_isa() {
  static const NormalsIsa chosen = cpu_runs(NormalsIsa::kAvx512) ? NormalsIsa::kAvx512
                                   : cpu_runs(NormalsIsa::kAvx2) ? NormalsIsa::kAvx2
                                                                 : NormalsIsa::kGeneric;
  return chosen;
}

void fill_normals_on(NormalsIsa isa, uint64_t seed, uint64_t offset, uint64_t first_group,
                     int64_t num_groups, float* out) {
  switch (isa) {
#if defined(__x86_64__)
    case NormalsIsa::kAvx512:
      fill_normals_avx512(seed, offset, first_group, num_groups, out);
      return;
    case NormalsIsa::kAvx2:
      fill_normals_avx2(seed, offset, first_group, num_groups, out);
      return;
#endif
    default:
      fill_normals_generic(seed, offset, first_group, num_groups, out);
  }
}

void fill_normals(uint64_t seed, uint64_t offset, uint64_t first_group, int64_t num_groups,
                  float* out) {
  fill_normals_on(normals_isa(), seed, offset, first_group, num_groups, out);
}

}  // namespace lift_ext
