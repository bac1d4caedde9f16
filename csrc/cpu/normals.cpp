// Philox normals for the CPU kernels (see lift_ext/cpu_normals.h): the portable path (the AVX2
// and AVX-512F paths: normals_avx2.cpp, normals_avx512.cpp), all bitwise equal to
// philox_normal4 (philox.h), and the choice among them, made once per process from the CPU's features and $LIFT_EXT_CPU_ISA
// (normals_isa).
#include "lift_ext/cpu_normals.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "lift_ext/philox.h"
#include "normals_paths.h"

namespace lift_ext {
namespace {
constexpr int kLanes = 16;  // element groups generated together, one SIMD lane each

// Box-Muller of kLanes groups' Philox words (w0..w3 per lane) and the interleaved store of
// the first `lanes` groups' four normals: the portable path's (the vector paths write theirs
// out, box_muller_steps in normals_simd.h).
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

namespace {
// Box-Muller alone on words r1[i], r2[i] through store_normals (the radius and angle words of
// normals 0 and 1, repeated as those of 2 and 3), inlined into each caller's target.
__attribute__((always_inline)) inline void box_muller_words(const uint32_t* r1, const uint32_t* r2,
                                                            int64_t n, float* z0, float* z1) {
  for (int64_t i0 = 0; i0 < n; i0 += kLanes) {
    const int64_t lanes = std::min<int64_t>(kLanes, n - i0);
    uint32_t w1[kLanes] = {}, w2[kLanes] = {};
    std::copy(r1 + i0, r1 + i0 + lanes, w1);
    std::copy(r2 + i0, r2 + i0 + lanes, w2);
    float out[4 * kLanes];
    store_normals(w1, w2, w1, w2, lanes, out);
    for (int64_t l = 0; l < lanes; ++l) {
      z0[i0 + l] = out[4 * l];
      z1[i0 + l] = out[4 * l + 1];
    }
  }
}
}  // namespace

void box_muller_generic(const uint32_t* r1, const uint32_t* r2, int64_t n, float* z0, float* z1) {
  box_muller_words(r1, r2, n, z0, z1);
}



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

namespace {
// The path $LIFT_EXT_CPU_ISA names, where it names one this CPU runs (lift_ext/_loader.py
// refuses any other value when lift_ext is imported); otherwise the fastest. Off x86-64 the
// portable path is the only one, and the variable is not read (the aarch64 test image of this
// file links no C library).
NormalsIsa chosen_isa() {
#if defined(__x86_64__)
  const char* requested = std::getenv(kCpuIsaVariable);
  for (int i = 0; requested != nullptr && i < kNumNormalsIsas; ++i) {
    const auto isa = static_cast<NormalsIsa>(i);
    if (std::strcmp(requested, normals_isa_name(isa)) == 0 && cpu_runs(isa)) return isa;
  }
#endif
  return cpu_runs(NormalsIsa::kAvx512) ? NormalsIsa::kAvx512
         : cpu_runs(NormalsIsa::kAvx2) ? NormalsIsa::kAvx2
                                       : NormalsIsa::kGeneric;
}
}  // namespace

NormalsIsa normals_isa() {
  static const NormalsIsa chosen = chosen_isa();
  return chosen;
}

void fill_normals_on(NormalsIsa isa, uint64_t seed, uint64_t offset, uint64_t first_group,
                     int64_t num_groups, float* out, const NormalsPrefetch* prefetch) {
  switch (isa) {
#if defined(__x86_64__)
    case NormalsIsa::kAvx512:
      fill_normals_avx512(seed, offset, first_group, num_groups, out, prefetch);
      return;
    case NormalsIsa::kAvx2:
      fill_normals_avx2(seed, offset, first_group, num_groups, out, prefetch);
      return;
#endif
    default:
      fill_normals_generic(seed, offset, first_group, num_groups, out);
  }
}

void box_muller_on(NormalsIsa isa, const uint32_t* r1, const uint32_t* r2, int64_t n, float* z0,
                   float* z1) {
  switch (isa) {
#if defined(__x86_64__)
    case NormalsIsa::kAvx512:
      box_muller_avx512(r1, r2, n, z0, z1);
      return;
    case NormalsIsa::kAvx2:
      box_muller_avx2(r1, r2, n, z0, z1);
      return;
#endif
    default:
      box_muller_generic(r1, r2, n, z0, z1);
  }
}

void fill_normals(uint64_t seed, uint64_t offset, uint64_t first_group, int64_t num_groups,
                  float* out, const NormalsPrefetch* prefetch) {
  fill_normals_on(normals_isa(), seed, offset, first_group, num_groups, out, prefetch);
}

}  // namespace lift_ext
