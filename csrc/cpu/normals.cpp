// Philox normals for the CPU kernels (see lift_ext/cpu_normals.h).
#include "lift_ext/cpu_normals.h"

#include <algorithm>

#include "lift_ext/philox.h"

namespace lift_ext {
namespace {
constexpr int kLanes = 16;  // element groups generated together, one SIMD lane each
}  // namespace

// Structure-of-arrays over kLanes groups so every loop below maps onto SIMD lanes.
__attribute__((target_clones("avx512f", "avx2", "default")))
void fill_normals(uint64_t seed, uint64_t offset, uint64_t first_group, int64_t num_groups,
                  float* __restrict out) {
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
    float z0[kLanes], z1[kLanes], z2[kLanes], z3[kLanes];
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      box_muller(c0[l], c1[l], z0[l], z1[l]);
      box_muller(c2[l], c3[l], z2[l], z3[l]);
    }
    const int64_t lanes = std::min<int64_t>(kLanes, num_groups - j0);
    for (int l = 0; l < lanes; ++l) {
      float* o = out + 4 * (j0 + l);
      o[0] = z0[l];
      o[1] = z1[l];
      o[2] = z2[l];
      o[3] = z3[l];
    }
  }
}

}  // namespace lift_ext
