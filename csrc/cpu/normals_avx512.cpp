// The AVX-512F path of the CPU normals (csrc/cpu/normals_paths.h), bitwise equal to
// philox_normal4 (philox.h), built as the AVX2 path is (benchmarks/NOTES.md entry 18): the
// Philox rounds of the next kGroups groups run between the steps of these groups' Box-Muller
// (normals_simd.h's, on 16 lanes, both pairs of words at once), a round gathers its products'
// halves with two-source permutes, the four normals of 16 groups are interleaved in registers,
// and the SGLD step's rows are requested between the steps.
#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>

#include "lift_ext/philox.h"
#include "normals_paths.h"

#define LIFT_SIMD __attribute__((target("avx512f"), always_inline)) inline
#include "normals_simd.h"

// GCC 12's avx512fintrin.h seeds several intrinsics with an "undefined" vector and then warns
// about it (-Wuninitialized, -Wmaybe-uninitialized), a false positive inside the header.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace lift_ext {
namespace {
constexpr int kGroups = 16;  // element groups per iteration: one zmm register of uint32 lanes

LIFT_SIMD __m512i splat_u32(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }

// 16 groups' Philox words: word k of lane l is w[k][l].
struct Philox16 {
  __m512i w[4];
};

// Counters (group low, group high, offset low, offset high) of groups base .. base + 15, the
// low word's carry into the high word included.
LIFT_SIMD Philox16 counters16(uint64_t base, uint64_t offset) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i lo = _mm512_add_epi32(splat_u32(static_cast<uint32_t>(base)), lane);
  const __mmask16 carry = _mm512_cmplt_epu32_mask(lo, lane);  // the low word wrapped
  const __m512i hi = splat_u32(static_cast<uint32_t>(base >> 32));
  return Philox16{{lo, _mm512_mask_add_epi32(hi, carry, hi, splat_u32(1)), splat_u32(static_cast<uint32_t>(offset)),
                   splat_u32(static_cast<uint32_t>(offset >> 32))}};
}

// One Philox4x32 round with round keys k0, k1 (philox4x32_10 in philox.h) in 12 instructions:
// vpmuludq multiplies the even lanes (e) and, after a 64-bit shift moves them down, the odd
// lanes (o); one two-source permute gathers the products' high halves in lane order and one
// their low halves.
LIFT_SIMD void philox_round16(Philox16& c, __m512i k0, __m512i k1) {
  using namespace philox_detail;
  const __m512i high = _mm512_setr_epi32(1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
  const __m512i low = _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
  const __m512i m0 = splat_u32(kMul0), m1 = splat_u32(kMul1);
  const __m512i e0 = _mm512_mul_epu32(c.w[0], m0), o0 = _mm512_mul_epu32(_mm512_srli_epi64(c.w[0], 32), m0);
  const __m512i e1 = _mm512_mul_epu32(c.w[2], m1), o1 = _mm512_mul_epu32(_mm512_srli_epi64(c.w[2], 32), m1);
  constexpr int kXor3 = 0x96;  // ternary logic: a ^ b ^ c
  c.w[0] = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi32(e1, high, o1), c.w[1], k0, kXor3);
  c.w[1] = _mm512_permutex2var_epi32(e1, low, o1);
  c.w[2] = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi32(e0, high, o0), c.w[3], k1, kXor3);
  c.w[3] = _mm512_permutex2var_epi32(e0, low, o0);
}

// The AVX-512F vectors and operations of box_muller_steps (normals_simd.h): 16 lanes, a lane
// predicate is a mask register.
struct Avx512 {
  using F = __m512;
  using I = __m512i;
  using Mask = __mmask16;
  LIFT_SIMD static I splat_i(uint32_t v) { return splat_u32(v); }
  LIFT_SIMD static F splat_f(float v) { return _mm512_set1_ps(v); }
  template <int kBits>
  LIFT_SIMD static I srli(I x) { return _mm512_srli_epi32(x, kBits); }
  LIFT_SIMD static I or_(I a, I b) { return _mm512_or_si512(a, b); }
  LIFT_SIMD static I and_(I a, I b) { return _mm512_and_si512(a, b); }
  LIFT_SIMD static I xor_(I a, I b) { return _mm512_xor_si512(a, b); }
  LIFT_SIMD static I add_i(I a, I b) { return _mm512_add_epi32(a, b); }
  LIFT_SIMD static I sub_i(I a, I b) { return _mm512_sub_epi32(a, b); }
  LIFT_SIMD static F cvt(I x) { return _mm512_cvtepi32_ps(x); }
  LIFT_SIMD static I as_i(F x) { return _mm512_castps_si512(x); }
  LIFT_SIMD static F as_f(I x) { return _mm512_castsi512_ps(x); }
  LIFT_SIMD static F add(F a, F b) { return _mm512_add_ps(a, b); }
  LIFT_SIMD static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  LIFT_SIMD static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  LIFT_SIMD static F div(F a, F b) { return _mm512_div_ps(a, b); }
  LIFT_SIMD static F sqrt(F x) { return _mm512_sqrt_ps(x); }
  LIFT_SIMD static Mask greater(I a, I b) { return _mm512_cmpgt_epi32_mask(a, b); }  // signed
  LIFT_SIMD static I minus_where(Mask m, I x, I v) { return _mm512_mask_sub_epi32(x, m, x, v); }
  LIFT_SIMD static I plus_one_where(Mask m, I x) { return _mm512_mask_add_epi32(x, m, x, splat_u32(1)); }
  // if_set where the sign bit of `selector` is set, else if_clear.
  LIFT_SIMD static F select_by_sign(I selector, F if_clear, F if_set) {
    return _mm512_mask_blend_ps(_mm512_cmplt_epi32_mask(selector, _mm512_setzero_si512()), if_clear, if_set);
  }
  LIFT_SIMD static F xor_sign(F x, I sign) { return as_f(_mm512_xor_si512(as_i(x), sign)); }
};

// The four normals of 16 groups, group-interleaved: out[4 l + k] = z_k[l] for l < lanes. Two
// stages of two-source permutes (pairs of z0 z1 and of z2 z3, then quads); a partial vector
// (lanes < 16) goes through a buffer.
LIFT_SIMD void store_normals16(__m512 z0, __m512 z1, __m512 z2, __m512 z3, int64_t lanes, float* out) {
  const __m512i pairs_lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i pairs_hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512i quads_lo = _mm512_setr_epi32(0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23);
  const __m512i quads_hi = _mm512_setr_epi32(8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31);
  const __m512 p01_lo = _mm512_permutex2var_ps(z0, pairs_lo, z1), p01_hi = _mm512_permutex2var_ps(z0, pairs_hi, z1);
  const __m512 p23_lo = _mm512_permutex2var_ps(z2, pairs_lo, z3), p23_hi = _mm512_permutex2var_ps(z2, pairs_hi, z3);
  const __m512 groups[4] = {_mm512_permutex2var_ps(p01_lo, quads_lo, p23_lo),
                            _mm512_permutex2var_ps(p01_lo, quads_hi, p23_lo),
                            _mm512_permutex2var_ps(p01_hi, quads_lo, p23_hi),
                            _mm512_permutex2var_ps(p01_hi, quads_hi, p23_hi)};
  if (lanes >= kGroups) {
    for (int k = 0; k < 4; ++k) _mm512_storeu_ps(out + 16 * k, groups[k]);
    return;
  }
  alignas(64) float buf[4 * kGroups];
  for (int k = 0; k < 4; ++k) _mm512_store_ps(buf + 16 * k, groups[k]);
  std::copy(buf, buf + 4 * lanes, out);
}

// kPrefetch: whether `prefetch` is given (as fill_normals_avx2_loop).
template <bool kPrefetch>
__attribute__((target("avx512f")))
void fill_normals_avx512_loop(uint64_t seed, uint64_t offset, uint64_t first_group, int64_t num_groups,
                              float* __restrict out, const NormalsPrefetch* prefetch) {
  RoundKeys<Avx512> keys;
  set_round_keys(seed, keys);
  auto queue = row_queue<kPrefetch>(prefetch, 4 * num_groups);  // one line between two steps
  // The first iteration's rounds run alone; every later iteration's run between the
  // Box-Muller steps of the one before, with a row request beside each.
  Philox16 state = counters16(first_group, offset);
  for (int round = 0; round < 10; ++round) philox_round16(state, keys.k0[round], keys.k1[round]);
  for (int64_t j0 = 0; j0 < num_groups; j0 += kGroups) {
    const bool more = j0 + kGroups < num_groups;
    const __m512i r1[2] = {state.w[0], state.w[2]};
    const __m512i r2[2] = {state.w[1], state.w[3]};
    __m512 z0[2], z1[2];
    state = counters16(first_group + static_cast<uint64_t>(j0 + kGroups), offset);
    box_muller_steps<Avx512, 2>(r1, r2, z0, z1, [&](int step) __attribute__((target("avx512f"), always_inline)) {
      queue.request();
      if (more) philox_round16(state, keys.k0[step], keys.k1[step]);
    });
    store_normals16(z0[0], z1[0], z0[1], z1[1], std::min<int64_t>(kGroups, num_groups - j0), out + 4 * j0);
  }
}

}  // namespace

void fill_normals_avx512(uint64_t seed, uint64_t offset, uint64_t first_group, int64_t num_groups,
                         float* out, const NormalsPrefetch* prefetch) {
  if (prefetch != nullptr) {
    fill_normals_avx512_loop<true>(seed, offset, first_group, num_groups, out, prefetch);
  } else {
    fill_normals_avx512_loop<false>(seed, offset, first_group, num_groups, out, nullptr);
  }
}

__attribute__((target("avx512f")))
void box_muller_avx512(const uint32_t* r1, const uint32_t* r2, int64_t n, float* z0, float* z1) {
  for (int64_t i0 = 0; i0 < n; i0 += kGroups) {
    const auto lanes = static_cast<unsigned>(std::min<int64_t>(kGroups, n - i0));
    const auto valid = static_cast<__mmask16>((1u << lanes) - 1u);
    const __m512i words1 = _mm512_maskz_loadu_epi32(valid, r1 + i0), words2 = _mm512_maskz_loadu_epi32(valid, r2 + i0);
    __m512 a, b;
    box_muller_steps<Avx512, 1>(&words1, &words2, &a, &b, [](int) {});
    _mm512_mask_storeu_ps(z0 + i0, valid, a);
    _mm512_mask_storeu_ps(z1 + i0, valid, b);
  }
}

}  // namespace lift_ext
#pragma GCC diagnostic pop
#endif  // __x86_64__
