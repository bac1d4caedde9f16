// The code paths of the CPU normals, each bitwise equal to philox_normal4 (philox.h): portable
// in csrc/cpu/normals.cpp, AVX2 in normals_avx2.cpp, AVX-512F in normals_avx512.cpp (the two
// share normals_simd.h). The functions of lift_ext/cpu_normals.h pick one; these are their parts.
#pragma once

#include <cstdint>

#include "lift_ext/cpu_normals.h"

namespace lift_ext {

// fill_normals on one path (the portable path takes no prefetch request).
void fill_normals_generic(uint64_t seed, uint64_t offset, uint64_t first_group, int64_t num_groups,
                          float* __restrict out);
// box_muller_on on one path.
void box_muller_generic(const uint32_t* r1, const uint32_t* r2, int64_t n, float* z0, float* z1);

#if defined(__x86_64__)
void fill_normals_avx512(uint64_t seed, uint64_t offset, uint64_t first_group, int64_t num_groups,
                         float* out, const NormalsPrefetch* prefetch);
void box_muller_avx512(const uint32_t* r1, const uint32_t* r2, int64_t n, float* z0, float* z1);
void fill_normals_avx2(uint64_t seed, uint64_t offset, uint64_t first_group, int64_t num_groups,
                       float* out, const NormalsPrefetch* prefetch);
void box_muller_avx2(const uint32_t* r1, const uint32_t* r2, int64_t n, float* z0, float* z1);
#endif

}  // namespace lift_ext
