// Grid size for the grid-stride kernels of lift_ext (CUDA only, no ATen).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <vector>

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

// Blocks of `threads` for `items` work items, at most one wave: as many blocks as the device
// keeps resident at once for `kernel` (its registers and shared memory decide), so that a
// kernel whose blocks each take an equal contiguous share of the items ends in one wave, with
// no tail of late blocks on a few multiprocessors. The residency is queried once per kernel
// and device.
template <typename Kernel>
int resident_grid_blocks(Kernel kernel, int64_t items, int threads) {
  static std::mutex mutex;
  static std::vector<std::pair<std::pair<const void*, int>, int>> known;  // (kernel, device) -> blocks
  int device = 0;
  cudaGetDevice(&device);
  const auto key = std::make_pair(reinterpret_cast<const void*>(kernel), device);
  int resident = 0;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    for (const auto& entry : known) {
      if (entry.first == key) resident = entry.second;
    }
    if (resident == 0) {
      int sms = 0, per_sm = 0;
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
      if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0) != cudaSuccess) {
        cudaGetLastError();  // clear it; fall back to the grid-stride bound
        per_sm = 8;
      }
      resident = std::max(1, sms) * std::max(1, per_sm);
      known.emplace_back(key, resident);
    }
  }
  const int64_t wanted = (items + threads - 1) / threads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(wanted, resident)));
}

}  // namespace lift_ext
