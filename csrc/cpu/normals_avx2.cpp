// The AVX2 path of the CPU normals (csrc/cpu/normals_paths.h), bitwise equal to philox_normal4
// (philox.h): AVX2 has neither unsigned integer -> float conversion nor masked operations, so
// the compiler leaves the header's Box-Muller scalar for AVX2; here it is normals_simd.h's, on
// AVX2 registers: operations that give the header's floats bit for bit (no FMA: the target is
// "avx2" alone).
// Measured design (benchmarks/NOTES.md, entries 9, 15 and 17): the Philox rounds of the next
// kGroups groups run between the Box-Muller steps of these, so that the integer multiplies and
// the float polynomials share the cycles, and a round is 16 instructions; the SGLD step's rows
// are requested between the steps too.
#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>

#include "lift_ext/philox.h"
#include "normals_paths.h"

#define LIFT_SIMD __attribute__((target("avx2"), always_inline)) inline
#include "normals_simd.h"

namespace lift_ext {
namespace {
constexpr int kGroups = 16;  // element groups per iteration: two ymm registers of uint32 lanes

LIFT_SIMD __m256i splat_u32(uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
LIFT_SIMD __m256 splat_f32(float v) { return _mm256_set1_ps(v); }

// 8 groups' Philox words: word k of lane l is w[k][l].
struct Philox8 {
  __m256i w[4];
};

// Counters (group low, group high, offset low, offset high) of groups base .. base + 7, the
// low word's carry into the high word included.
LIFT_SIMD Philox8 counters8(uint64_t base, uint64_t offset) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i lo = _mm256_add_epi32(splat_u32(static_cast<uint32_t>(base)), lane);
  // the low word wrapped in a lane iff lo < lane (unsigned), i.e. max(lo, lane) != lo
  const __m256i no_carry = _mm256_cmpeq_epi32(_mm256_max_epu32(lo, lane), lo);
  const __m256i carry = _mm256_xor_si256(no_carry, _mm256_set1_epi32(-1));  // -1 where wrapped
  const __m256i hi = _mm256_sub_epi32(splat_u32(static_cast<uint32_t>(base >> 32)), carry);
  return Philox8{{lo, hi, splat_u32(static_cast<uint32_t>(offset)),
                  splat_u32(static_cast<uint32_t>(offset >> 32))}};
}

// The 32-bit halves of the 64-bit products of 8 lanes: vpmuludq multiplies the even lanes
// (e = products of lanes 0, 2 | 4, 6) and, after a shuffle moves them down, the odd lanes
// (o = 1, 3 | 5, 7); one two-source shuffle gathers the high halves and one the low halves,
// in the lane order 0 2 1 3 | 4 6 5 7.
LIFT_SIMD __m256i high_halves(__m256i e, __m256i o) {
  return _mm256_castps_si256(
      _mm256_shuffle_ps(_mm256_castsi256_ps(e), _mm256_castsi256_ps(o), _MM_SHUFFLE(3, 1, 3, 1)));
}
LIFT_SIMD __m256i low_halves(__m256i e, __m256i o) {
  return _mm256_castps_si256(
      _mm256_shuffle_ps(_mm256_castsi256_ps(e), _mm256_castsi256_ps(o), _MM_SHUFFLE(2, 0, 2, 0)));
}

// One Philox4x32 round with round keys k0, k1 (philox4x32_10 in philox.h), 16 instructions and
// no blends or 64-bit shifts (one pipe runs those on AMD's Zen cores). The products' halves
// come out with lanes 1 and 2 of each 128 bits swapped, so the words carried over (c1, c3)
// are swapped the same way, and the state leaves the round in that order: after an even
// number of rounds (the ten) every lane is back in its place.
LIFT_SIMD void philox_round8(Philox8& c, __m256i k0, __m256i k1) {
  using namespace philox_detail;
  const __m256i m0 = splat_u32(kMul0), m1 = splat_u32(kMul1);
  const __m256i e0 = _mm256_mul_epu32(c.w[0], m0);
  const __m256i o0 = _mm256_mul_epu32(_mm256_shuffle_epi32(c.w[0], 0xF5), m0);  // lanes 1 1 3 3
  const __m256i e1 = _mm256_mul_epu32(c.w[2], m1);
  const __m256i o1 = _mm256_mul_epu32(_mm256_shuffle_epi32(c.w[2], 0xF5), m1);
  const __m256i c1 = _mm256_shuffle_epi32(c.w[1], 0xD8), c3 = _mm256_shuffle_epi32(c.w[3], 0xD8);  // 0 2 1 3
  c.w[0] = _mm256_xor_si256(_mm256_xor_si256(high_halves(e1, o1), c1), k0);
  c.w[1] = low_halves(e1, o1);
  c.w[2] = _mm256_xor_si256(_mm256_xor_si256(high_halves(e0, o0), c3), k1);
  c.w[3] = low_halves(e0, o0);
}

// The AVX2 vectors and operations of box_muller_steps (normals_simd.h): 8 lanes, a lane
// predicate is a vector of all-ones or zero lanes.
struct Avx2 {
  using F = __m256;
  using I = __m256i;
  using Mask = __m256i;
  LIFT_SIMD static I splat_i(uint32_t v) { return splat_u32(v); }
  LIFT_SIMD static F splat_f(float v) { return splat_f32(v); }
  template <int kBits>
  LIFT_SIMD static I srli(I x) { return _mm256_srli_epi32(x, kBits); }
  LIFT_SIMD static I or_(I a, I b) { return _mm256_or_si256(a, b); }
  LIFT_SIMD static I and_(I a, I b) { return _mm256_and_si256(a, b); }
  LIFT_SIMD static I xor_(I a, I b) { return _mm256_xor_si256(a, b); }
  LIFT_SIMD static I add_i(I a, I b) { return _mm256_add_epi32(a, b); }
  LIFT_SIMD static I sub_i(I a, I b) { return _mm256_sub_epi32(a, b); }
  LIFT_SIMD static F cvt(I x) { return _mm256_cvtepi32_ps(x); }
  LIFT_SIMD static I as_i(F x) { return _mm256_castps_si256(x); }
  LIFT_SIMD static F as_f(I x) { return _mm256_castsi256_ps(x); }
  LIFT_SIMD static F add(F a, F b) { return _mm256_add_ps(a, b); }
  LIFT_SIMD static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  LIFT_SIMD static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  LIFT_SIMD static F div(F a, F b) { return _mm256_div_ps(a, b); }
  LIFT_SIMD static F sqrt(F x) { return _mm256_sqrt_ps(x); }
  LIFT_SIMD static Mask greater(I a, I b) { return _mm256_cmpgt_epi32(a, b); }  // signed
  LIFT_SIMD static I minus_where(Mask m, I x, I v) { return _mm256_sub_epi32(x, _mm256_and_si256(m, v)); }
  LIFT_SIMD static I plus_one_where(Mask m, I x) { return _mm256_sub_epi32(x, m); }  // m = -1 there
  // if_set where the sign bit of `selector` is set, else if_clear.
  LIFT_SIMD static F select_by_sign(I selector, F if_clear, F if_set) {
    return _mm256_blendv_ps(if_clear, if_set, _mm256_castsi256_ps(selector));
  }
  LIFT_SIMD static F xor_sign(F x, I sign) { return _mm256_xor_ps(x, _mm256_castsi256_ps(sign)); }
};

// Box-Muller of words (r1[j], r2[j]), j = 0, 1, one vector at a time, with the ten rounds of
// `state` between the steps (five in each; none where `rounds` is false) and request() at the
// five steps between those.
template <typename Request>
LIFT_SIMD void box_muller16_during_rounds(const __m256i* r1, const __m256i* r2, __m256* z0, __m256* z1,
                                          Philox8& state, const RoundKeys<Avx2>& keys, bool rounds,
                                          Request&& request) {
  for (int j = 0; j < 2; ++j) {
    box_muller_steps<Avx2, 1>(r1 + j, r2 + j, z0 + j, z1 + j, [&](int step) __attribute__((target("avx2"), always_inline)) {
      if (step % 2 == 1) {
        request();
      } else if (rounds) {
        philox_round8(state, keys.k0[5 * j + step / 2], keys.k1[5 * j + step / 2]);
      }
    });
  }
}

// The four normals of 8 groups, group-interleaved: out[4 l + k] = z_k[l] for l < lanes. A 4 x 8
// transpose in registers; a partial vector (lanes < 8) goes through a buffer.
LIFT_SIMD void store_normals8(__m256 z0, __m256 z1, __m256 z2, __m256 z3, int64_t lanes, float* out) {
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
}  // namespace

namespace {
// kPrefetch: whether `prefetch` is given (without it, the loop is compiled as if it did not
// exist; with it, requesting costs the loop a queue index and a branch per request point).
template <bool kPrefetch>
__attribute__((target("avx2")))
void fill_normals_avx2_loop(uint64_t seed, uint64_t offset, uint64_t first_group, int64_t num_groups,
                            float* __restrict out, const NormalsPrefetch* prefetch) {
  RoundKeys<Avx2> keys;
  set_round_keys(seed, keys);
  auto queue = row_queue<kPrefetch>(prefetch, 4 * num_groups);  // one line between two steps
  auto request = [&]() __attribute__((always_inline)) { queue.request(); };
  // Two 8-group states per iteration (kGroups groups). The first iteration's rounds run
  // alone; every later iteration's run between the Box-Muller steps of the one before.
  Philox8 a = counters8(first_group, offset), b = counters8(first_group + 8, offset);
  for (int round = 0; round < 10; ++round) {
    philox_round8(a, keys.k0[round], keys.k1[round]);
    philox_round8(b, keys.k0[round], keys.k1[round]);
  }
  for (int64_t j0 = 0; j0 < num_groups; j0 += kGroups) {
    const bool more = j0 + kGroups < num_groups;
    const uint64_t next = first_group + static_cast<uint64_t>(j0 + kGroups);
    const __m256i r1[4] = {a.w[0], a.w[2], b.w[0], b.w[2]};
    const __m256i r2[4] = {a.w[1], a.w[3], b.w[1], b.w[3]};
    __m256 z0[4], z1[4];
    a = counters8(next, offset);
    box_muller16_during_rounds(r1, r2, z0, z1, a, keys, more, request);
    b = counters8(next + 8, offset);
    box_muller16_during_rounds(r1 + 2, r2 + 2, z0 + 2, z1 + 2, b, keys, more, request);
    const int64_t lanes = std::min<int64_t>(kGroups, num_groups - j0);
    store_normals8(z0[0], z1[0], z0[1], z1[1], std::min<int64_t>(lanes, 8), out + 4 * j0);
    if (lanes > 8) store_normals8(z0[2], z1[2], z0[3], z1[3], lanes - 8, out + 4 * (j0 + 8));
  }
}

}  // namespace

void fill_normals_avx2(uint64_t seed, uint64_t offset, uint64_t first_group, int64_t num_groups,
                       float* out, const NormalsPrefetch* prefetch) {
  if (prefetch != nullptr) {
    fill_normals_avx2_loop<true>(seed, offset, first_group, num_groups, out, prefetch);
  } else {
    fill_normals_avx2_loop<false>(seed, offset, first_group, num_groups, out, nullptr);
  }
}

__attribute__((target("avx2")))
void box_muller_avx2(const uint32_t* r1, const uint32_t* r2, int64_t n, float* z0, float* z1) {
  for (int64_t i0 = 0; i0 < n; i0 += kGroups) {
    const int64_t lanes = std::min<int64_t>(kGroups, n - i0);
    alignas(32) uint32_t w1[kGroups] = {}, w2[kGroups] = {};
    std::copy(r1 + i0, r1 + i0 + lanes, w1);
    std::copy(r2 + i0, r2 + i0 + lanes, w2);
    const __m256i v1[2] = {_mm256_load_si256(reinterpret_cast<const __m256i*>(w1)),
                           _mm256_load_si256(reinterpret_cast<const __m256i*>(w1 + 8))};
    const __m256i v2[2] = {_mm256_load_si256(reinterpret_cast<const __m256i*>(w2)),
                           _mm256_load_si256(reinterpret_cast<const __m256i*>(w2 + 8))};
    __m256 a[2], b[2];
    for (int j = 0; j < 2; ++j) box_muller_steps<Avx2, 1>(v1 + j, v2 + j, a + j, b + j, [](int) {});
    alignas(32) float f0[kGroups], f1[kGroups];
    for (int k = 0; k < 2; ++k) {
      _mm256_store_ps(f0 + 8 * k, a[k]);
      _mm256_store_ps(f1 + 8 * k, b[k]);
    }
    std::copy(f0, f0 + lanes, z0 + i0);
    std::copy(f1, f1 + lanes, z1 + i0);
  }
}

}  // namespace lift_ext
#endif  // __x86_64__
