// CUDA kernels of the Gaussian-mixture op family (no ATen here: the glue is csrc/cuda/gmm.cpp).
//
// E-step, two stages, no atomics: block (c, k) reduces chunk c of D (kGmmChunk elements) for
// component k and every sample into float64 partials (per-thread sums, then a fixed-shape
// warp-shuffle and shared-memory tree); one block per sample then sums the chunk partials
// with a fixed thread-to-chunk assignment and the same tree, and finishes the row with
// gmm_finalize_row. The result is identical run to run on a device.
// M-step: one thread per element and component, float64 merge (gmm.h); components whose batch
// weight is 0 exit at once; counts are updated by a second launch on the same stream.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "lift_ext/cuda_grid.cuh"
#include "lift_ext/gmm.h"

namespace lift_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 8;  // samples reduced together by one E-step block pass

// The values of `n` consecutive elements at p (n <= 4) into out[0..3], zero-padded; one
// 16-byte load when kVec (p aligned and n == 4).
template <bool kVec>
__device__ __forceinline__ void load4(const float* p, int n, float out[4]) {
  if (kVec) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) out[e] = e < n ? p[e] : 0.0f;
  }
}

// Block-wide sum of v[0..kCount) (same reduction tree every launch); valid in thread 0.
template <int kCount>
__device__ __forceinline__ void block_sum(double (&v)[kCount], double (*scratch)[kWarps]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int j = 0; j < kCount; ++j) {
    double s = v[j];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) scratch[j][warp] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
#pragma unroll
    for (int j = 0; j < kCount; ++j) {
      double s = 0.0;
      for (int w = 0; w < kWarps; ++w) s += scratch[j][w];
      v[j] = s;
    }
  }
  __syncthreads();
}

template <bool kVec>
__global__ void __launch_bounds__(kThreads)
gmm_estep_partial_kernel(const float* __restrict__ x, const float* __restrict__ means,
                         const float* __restrict__ m2, const double* __restrict__ counts,
                         int64_t batch, int64_t components, int64_t dim, float reg,
                         double* __restrict__ quad_part, double* __restrict__ logdet_part) {
  __shared__ double scratch[kTile + 1][kWarps];
  const int64_t c = blockIdx.x, k = blockIdx.y;
  const double count = counts[k];
  const int64_t lo = c * kGmmChunk;
  const int64_t len = dim - lo < kGmmChunk ? dim - lo : kGmmChunk;
  if (!(count > 0.0)) {  // an empty component: its loglik is -inf whatever these hold
    if (threadIdx.x == 0) {
      logdet_part[c * components + k] = 0.0;
      for (int64_t b = 0; b < batch; ++b) quad_part[(c * batch + b) * components + k] = 0.0;
    }
    return;
  }
  const float inv_count = static_cast<float>(1.0 / count);
  const float* mu = means + k * dim + lo;
  const float* var_src = m2 + k * dim + lo;
  for (int64_t b0 = 0; b0 < batch; b0 += kTile) {
    const int tile = batch - b0 < kTile ? static_cast<int>(batch - b0) : kTile;
    double acc[kTile + 1];
#pragma unroll
    for (int j = 0; j <= kTile; ++j) acc[j] = 0.0;
    for (int64_t i = 4 * static_cast<int64_t>(threadIdx.x); i < len; i += 4 * kThreads) {
      const int n = len - i < 4 ? static_cast<int>(len - i) : 4;
      float mv[4], sv[4], inv_var[4];
      load4<kVec>(mu + i, n, mv);
      load4<kVec>(var_src + i, n, sv);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (e < n) {
          const float v = gmm_variance(sv[e], inv_count, reg);
          inv_var[e] = 1.0f / v;
          if (b0 == 0) acc[kTile] += static_cast<double>(gmm_log(v));
        } else {
          inv_var[e] = 0.0f;
        }
      }
#pragma unroll
      for (int j = 0; j < kTile; ++j) {
        if (j < tile) {
          float xv[4];
          load4<kVec>(x + (b0 + j) * dim + lo + i, n, xv);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            if (e < n) acc[j] += static_cast<double>(gmm_quad_term(xv[e], mv[e], inv_var[e]));
          }
        }
      }
    }
    block_sum<kTile + 1>(acc, scratch);
    if (threadIdx.x == 0) {
      for (int j = 0; j < tile; ++j) quad_part[(c * batch + b0 + j) * components + k] = acc[j];
      if (b0 == 0) logdet_part[c * components + k] = acc[kTile];
    }
  }
}

// Block b: sums over chunks, then loglik / resp of sample b. Dynamic shared memory holds
// 2 * components float64 values.
__global__ void __launch_bounds__(kThreads)
gmm_estep_final_kernel(const double* __restrict__ quad_part, const double* __restrict__ logdet_part,
                       const double* __restrict__ counts, int64_t chunks, int64_t batch,
                       int64_t components, int64_t dim, double* __restrict__ loglik,
                       double* __restrict__ resp) {
  extern __shared__ double sums[];  // quad [K], then logdet [K]
  __shared__ double scratch[1][kWarps];
  const int64_t b = blockIdx.x;
  for (int64_t k = 0; k < components; ++k) {
    double v[1] = {0.0};
    double w[1] = {0.0};
    for (int64_t c = threadIdx.x; c < chunks; c += kThreads) {
      v[0] += quad_part[(c * batch + b) * components + k];
      w[0] += logdet_part[c * components + k];
    }
    block_sum<1>(v, scratch);
    block_sum<1>(w, scratch);
    if (threadIdx.x == 0) {
      sums[k] = v[0];
      sums[components + k] = w[0];
    }
  }
  if (threadIdx.x == 0) {
    gmm_finalize_row(sums, sums + components, counts, components, dim,
                     loglik + b * components, resp + b * components);
  }
}

__device__ __forceinline__ double batch_weight(const double* resp, int64_t batch,
                                               int64_t components, int64_t k) {
  double w = 0.0;
  for (int64_t b = 0; b < batch; ++b) w += resp[b * components + k];
  return w;
}

__global__ void __launch_bounds__(kThreads)
gmm_mstep_kernel(float* __restrict__ means, float* __restrict__ m2,
                 const double* __restrict__ counts, const float* __restrict__ x,
                 const double* __restrict__ resp, int64_t batch, int64_t components,
                 int64_t dim) {
  const int64_t k = blockIdx.y;
  const double w = batch_weight(resp, batch, components, k);
  if (w == 0.0) return;  // W_k == 0 leaves component k as it is
  const double count = counts[k];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; d < dim;
       d += stride) {
    double batch_mean, batch_m2;
    gmm_batch_moments(x + d, dim, resp + k, components, batch, w, batch_mean, batch_m2);
    gmm_merge_moments(means[k * dim + d], m2[k * dim + d], batch_mean, batch_m2, w, count);
  }
}

__global__ void gmm_counts_kernel(double* counts, const double* resp, int64_t batch,
                                  int64_t components) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < components) counts[k] += batch_weight(resp, batch, components, k);
}

__global__ void __launch_bounds__(kThreads)
gmm_prior_grad_kernel(float* __restrict__ grad, const float* __restrict__ theta,
                      const float* __restrict__ means, const float* __restrict__ m2,
                      const double* __restrict__ counts, const double* __restrict__ resp,
                      int64_t components, int64_t dim, float reg, double scale) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; d < dim;
       d += stride) {
    const float t = theta[d];
    double acc = 0.0;
    for (int64_t k = 0; k < components; ++k) {
      const double r = resp[k], count = counts[k];
      if (r == 0.0 || !(count > 0.0)) continue;
      acc += gmm_prior_term(r, t, means[k * dim + d], m2[k * dim + d],
                            static_cast<float>(1.0 / count), reg);
    }
    grad[d] += static_cast<float>(scale * acc);
  }
}

}  // namespace

int64_t gmm_estep_workspace_doubles(int64_t batch, int64_t components, int64_t dim) {
  const int64_t chunks = (dim + kGmmChunk - 1) / kGmmChunk;
  return chunks * batch * components + chunks * components;
}

void launch_gmm_estep_cuda(const float* x, const float* means, const float* m2,
                           const double* counts, int64_t batch, int64_t components, int64_t dim,
                           float reg, double* workspace, double* loglik, double* resp,
                           void* stream) {
  if (batch == 0) return;
  auto st = static_cast<cudaStream_t>(stream);
  const int64_t chunks = (dim + kGmmChunk - 1) / kGmmChunk;
  double* quad_part = workspace;
  double* logdet_part = workspace + chunks * batch * components;
  const bool vec = dim % 4 == 0 && (reinterpret_cast<uintptr_t>(x) & 15u) == 0 &&
                   (reinterpret_cast<uintptr_t>(means) & 15u) == 0 &&
                   (reinterpret_cast<uintptr_t>(m2) & 15u) == 0;
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(components));
  if (vec) {
    gmm_estep_partial_kernel<true><<<grid, kThreads, 0, st>>>(
        x, means, m2, counts, batch, components, dim, reg, quad_part, logdet_part);
  } else {
    gmm_estep_partial_kernel<false><<<grid, kThreads, 0, st>>>(
        x, means, m2, counts, batch, components, dim, reg, quad_part, logdet_part);
  }
  const size_t shared = 2 * static_cast<size_t>(components) * sizeof(double);
  gmm_estep_final_kernel<<<static_cast<unsigned>(batch), kThreads, shared, st>>>(
      quad_part, logdet_part, counts, chunks, batch, components, dim, loglik, resp);
}

void launch_gmm_mstep_cuda(float* means, float* m2, double* counts, const float* x,
                           const double* resp, int64_t batch, int64_t components, int64_t dim,
                           void* stream) {
  if (batch == 0) return;
  auto st = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(grid_stride_blocks(dim, kThreads)), static_cast<unsigned>(components));
  gmm_mstep_kernel<<<grid, kThreads, 0, st>>>(means, m2, counts, x, resp, batch, components, dim);
  const int count_blocks = static_cast<int>((components + kThreads - 1) / kThreads);
  gmm_counts_kernel<<<count_blocks, kThreads, 0, st>>>(counts, resp, batch, components);
}

void launch_gmm_prior_grad_cuda(float* grad, const float* theta, const float* means,
                                const float* m2, const double* counts, const double* resp,
                                int64_t components, int64_t dim, float reg, double scale,
                                void* stream) {
  gmm_prior_grad_kernel<<<grid_stride_blocks(dim, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      grad, theta, means, m2, counts, resp, components, dim, reg, scale);
}

}  // namespace lift_ext
