// Grid size for the grid-stride kernels of lift_ext (CUDA only, no ATen).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace lift_ext {

// Blocks of `threads` for `items` work items: enough to cover them, at most 8 blocks per
// multiprocessor of the current device (the kernels loop over the rest).
inline int grid_stride_blocks(int64_t items, int threads) {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  sms = std::max(sms, 1);
  const int64_t wanted = (items + threads - 1) / threads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(wanted, int64_t(sms) * 8)));
}

}  // namespace lift_ext
