// CUDA kernel of phi_step_ (see lift_ext/phi.h): one thread per group of 4 elements, one
// Philox counter per group, vector loads where the group is whole and 16-byte aligned.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "lift_ext/cuda_grid.cuh"
#include "lift_ext/phi.h"

namespace lift_ext {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
phi_step_kernel(float* phi, const float* sum, const float* mu0, int64_t numel, const PhiScalars s) {
  const int64_t groups = (numel + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += stride) {
    float z[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (s.noise_scale != 0.0f) philox_normal4(s.seed, s.offset, static_cast<uint64_t>(g), z);
    const int64_t e0 = 4 * g;
    const bool vector_ok = e0 + 4 <= numel &&
                           ((reinterpret_cast<uintptr_t>(phi + e0) |
                             reinterpret_cast<uintptr_t>(sum + e0) |
                             (mu0 ? reinterpret_cast<uintptr_t>(mu0 + e0) : 0)) & 15u) == 0;
    if (vector_ok) {
      const float4 p = *reinterpret_cast<const float4*>(phi + e0);
      const float4 t = *reinterpret_cast<const float4*>(sum + e0);
      const float4 m = mu0 ? *reinterpret_cast<const float4*>(mu0 + e0) : make_float4(0.f, 0.f, 0.f, 0.f);
      *reinterpret_cast<float4*>(phi + e0) = make_float4(
          phi_update_element(p.x, t.x, m.x, z[0], s), phi_update_element(p.y, t.y, m.y, z[1], s),
          phi_update_element(p.z, t.z, m.z, z[2], s), phi_update_element(p.w, t.w, m.w, z[3], s));
    } else {
      for (int k = 0; k < 4 && e0 + k < numel; ++k) {
        phi[e0 + k] = phi_update_element(phi[e0 + k], sum[e0 + k], mu0 ? mu0[e0 + k] : 0.0f, z[k], s);
      }
    }
  }
}

}  // namespace

void launch_phi_step_cuda(float* phi, const float* sum, const float* mu0, int64_t numel,
                          const PhiScalars& scalars, void* stream) {
  if (numel == 0) return;
  const int blocks = grid_stride_blocks((numel + 3) / 4, kThreads);
  phi_step_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(phi, sum, mu0, numel,
                                                                              scalars);
}

}  // namespace lift_ext
