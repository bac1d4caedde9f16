// The Philox normal stream on the CPU, vectorised (AVX-512 / AVX2 / baseline picked at load
// time). Bitwise equal to philox_normal4 in philox.h, which the CUDA kernels use.
#pragma once

#include <cstdint>

namespace lift_ext {

// out[4 * j + k] = normal k of element group first_group + j, for j < num_groups
// (element group g holds elements 4g .. 4g+3 of the flattened vector).
void fill_normals(uint64_t seed, uint64_t offset, uint64_t first_group, int64_t num_groups,
                  float* out);

}  // namespace lift_ext
