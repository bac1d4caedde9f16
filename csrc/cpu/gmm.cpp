// CPU kernels of the Gaussian-mixture op family: gmm_estep, gmm_mstep_, gmm_prior_grad_.
//
// All three walk D in chunks of kGmmChunk elements with at::parallel_for. The E-step writes
// one float64 partial per (chunk, sample, component) and one log-determinant partial per
// (chunk, component); inside a chunk the sums run over kLanes interleaved float64 lanes added
// in a fixed order at the end, so the result does not depend on the thread count or on the
// SIMD width picked at load time (the hot loops are compiled for AVX-512 / AVX2 / baseline;
// no multiply-add contraction anywhere, see CMakeLists.txt).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "lift_ext/gmm.h"
#include "lift_ext/gmm_args.h"

namespace lift_ext {
namespace {

constexpr int kLanes = 8;
constexpr int64_t kSub = 256;  // elements per M-step sub-block (float64 scratch on the stack)

double sum_lanes(const double (&acc)[kLanes]) {
  double total = 0.0;
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  return total;
}

// True when the n entries of m2 have one bit pattern (so one variance: m2 = 0 from SGLDGibbs's
// z draws, docs/design.md section 10).
bool uniform_chunk(const float* m2, int64_t n) {
  return std::all_of(m2, m2 + n, [&](const float& m) { return std::memcmp(&m, m2, sizeof(float)) == 0; });
}

// chunk_inverse_variance of a uniform chunk: the one variance's log taken once and added into
// the same lanes in the same order, so the sum is bit for bit that of the general loop.
double uniform_inverse_variance(float m2, float inv_count, float reg, int64_t n, float* __restrict inv_var) {
  const float v = gmm_variance(m2, inv_count, reg);
  const float inv = 1.0f / v;
  const double log_v = static_cast<double>(gmm_log(v));
  double acc[kLanes] = {};
  for (int64_t i = 0; i < n; ++i) {
    inv_var[i] = inv;
    acc[i % kLanes] += log_v;
  }
  return sum_lanes(acc);
}

// inv_var[i] = 1 / var_i for i < n; returns sum_i log var_i.
__attribute__((target_clones("avx512f", "avx2", "default")))
double chunk_inverse_variance(const float* __restrict m2, float inv_count, float reg, int64_t n,
                              float* __restrict inv_var) {
  if (uniform_chunk(m2, n)) return uniform_inverse_variance(m2[0], inv_count, reg, n, inv_var);
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const float v = gmm_variance(m2[i + l], inv_count, reg);
      inv_var[i + l] = 1.0f / v;
      acc[l] += static_cast<double>(gmm_log(v));
    }
  }
  for (int l = 0; i < n; ++i, ++l) {
    const float v = gmm_variance(m2[i], inv_count, reg);
    inv_var[i] = 1.0f / v;
    acc[l] += static_cast<double>(gmm_log(v));
  }
  return sum_lanes(acc);
}

// sum_i (x_i - mu_i)^2 * inv_var_i for i < n.
__attribute__((target_clones("avx512f", "avx2", "default")))
double chunk_quadratic(const float* __restrict x, const float* __restrict mu,
                       const float* __restrict inv_var, int64_t n) {
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      acc[l] += static_cast<double>(gmm_quad_term(x[i + l], mu[i + l], inv_var[i + l]));
    }
  }
  for (int l = 0; i < n; ++i, ++l) {
    acc[l] += static_cast<double>(gmm_quad_term(x[i], mu[i], inv_var[i]));
  }
  return sum_lanes(acc);
}

std::tuple<at::Tensor, at::Tensor> gmm_estep_cpu(const at::Tensor& x, const at::Tensor& means,
                                                 const at::Tensor& m2, const at::Tensor& counts,
                                                 double reg) {
  const GmmSizes sz = check_gmm_estep_args(x, means, m2, counts, reg);
  const int64_t B = sz.batch, K = sz.components, D = sz.dim;
  auto loglik = at::empty({B, K}, counts.options());
  auto resp = at::empty({B, K}, counts.options());
  if (B == 0) return {loglik, resp};
  const int64_t chunks = (D + kGmmChunk - 1) / kGmmChunk;
  std::vector<double> quad_part(chunks * B * K, 0.0), logdet_part(chunks * K, 0.0);
  const float* xp = x.data_ptr<float>();
  const float* mp = means.data_ptr<float>();
  const float* vp = m2.data_ptr<float>();
  const double* np = counts.data_ptr<double>();
  const float freg = static_cast<float>(reg);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> inv_var(kGmmChunk);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t lo = c * kGmmChunk, n = std::min(kGmmChunk, D - lo);
      for (int64_t k = 0; k < K; ++k) {
        if (!(np[k] > 0.0)) continue;
        const float inv_count = static_cast<float>(1.0 / np[k]);
        logdet_part[c * K + k] =
            chunk_inverse_variance(vp + k * D + lo, inv_count, freg, n, inv_var.data());
        for (int64_t b = 0; b < B; ++b) {
          quad_part[(c * B + b) * K + k] =
              chunk_quadratic(xp + b * D + lo, mp + k * D + lo, inv_var.data(), n);
        }
      }
    }
  });
  std::vector<double> logdet(K, 0.0), quad(K);
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t k = 0; k < K; ++k) logdet[k] += logdet_part[c * K + k];
  double* lp = loglik.data_ptr<double>();
  double* rp = resp.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b) {
    std::fill(quad.begin(), quad.end(), 0.0);
    for (int64_t c = 0; c < chunks; ++c)
      for (int64_t k = 0; k < K; ++k) quad[k] += quad_part[(c * B + b) * K + k];
    gmm_finalize_row(quad.data(), logdet.data(), np, K, D, lp + b * K, rp + b * K);
  }
  return {loglik, resp};
}

// The M-step on elements [0, n) of one component row; x points at sample 0 of the same
// elements (rows `stride` apart), q at q_0k (entries `q_stride` apart).
__attribute__((target_clones("avx512f", "avx2", "default")))
void merge_block(float* __restrict mean, float* __restrict m2, const float* __restrict x,
                 int64_t stride, const double* q, int64_t q_stride, int64_t batch, double w,
                 double count, int64_t n) {
  if (batch == 1) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      gmm_merge_moments(mean[i], m2[i], static_cast<double>(x[i]), 0.0, w, count);
    }
    return;
  }
  // gmm_batch_moments' terms, summed in the same order, with the sample loop outside.
  double bmean[kSub], bm2[kSub];
  for (int64_t s0 = 0; s0 < n; s0 += kSub) {
    const int64_t len = std::min(kSub, n - s0);
    std::fill(bmean, bmean + len, 0.0);
    std::fill(bm2, bm2 + len, 0.0);
    for (int64_t b = 0; b < batch; ++b) {
      const double qb = q[b * q_stride];
      const float* xb = x + b * stride + s0;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) bmean[i] += gmm_weighted_sample(qb, xb[i]);
    }
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) bmean[i] = bmean[i] / w;
    for (int64_t b = 0; b < batch; ++b) {
      const double qb = q[b * q_stride];
      const float* xb = x + b * stride + s0;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) bm2[i] += gmm_weighted_square(qb, xb[i], bmean[i]);
    }
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      gmm_merge_moments(mean[s0 + i], m2[s0 + i], bmean[i], bm2[i], w, count);
    }
  }
}

void gmm_mstep_cpu(const at::Tensor& means, const at::Tensor& m2, const at::Tensor& counts,
                   const at::Tensor& x, const at::Tensor& resp) {
  const GmmSizes sz = check_gmm_mstep_args(means, m2, counts, x, resp);
  const int64_t B = sz.batch, K = sz.components, D = sz.dim;
  const double* qp = resp.data_ptr<double>();
  double* np = counts.data_ptr<double>();
  std::vector<double> weight(K, 0.0);
  std::vector<int64_t> active;
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t b = 0; b < B; ++b) weight[k] += qp[b * K + k];
    if (weight[k] != 0.0) active.push_back(k);  // W_k == 0 leaves component k as it is
  }
  if (active.empty()) return;
  float* mp = means.data_ptr<float>();
  float* vp = m2.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  const int64_t chunks = (D + kGmmChunk - 1) / kGmmChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t lo = c * kGmmChunk, n = std::min(kGmmChunk, D - lo);
      for (const int64_t k : active) {
        merge_block(mp + k * D + lo, vp + k * D + lo, xp + lo, D, qp + k, K, B, weight[k],
                    np[k], n);
      }
    }
  });
  for (const int64_t k : active) np[k] += weight[k];
}

// acc[i] += r * (theta_i - mu_i) / var_i for i < n.
__attribute__((target_clones("avx512f", "avx2", "default")))
void prior_block(double* __restrict acc, const float* __restrict theta,
                 const float* __restrict mu, const float* __restrict m2, float inv_count,
                 float reg, double r, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    acc[i] += gmm_prior_term(r, theta[i], mu[i], m2[i], inv_count, reg);
  }
}

void gmm_prior_grad_cpu(const at::Tensor& grad, const at::Tensor& theta, const at::Tensor& means,
                        const at::Tensor& m2, const at::Tensor& counts, const at::Tensor& resp,
                        double reg, double scale) {
  const GmmSizes sz = check_gmm_prior_grad_args(grad, theta, means, m2, counts, resp, reg, scale);
  const int64_t K = sz.components, D = sz.dim;
  const double* rp = resp.data_ptr<double>();
  const double* np = counts.data_ptr<double>();
  std::vector<int64_t> active;
  for (int64_t k = 0; k < K; ++k) {
    if (rp[k] != 0.0 && np[k] > 0.0) active.push_back(k);
  }
  float* gp = grad.data_ptr<float>();
  const float* tp = theta.data_ptr<float>();
  const float* mp = means.data_ptr<float>();
  const float* vp = m2.data_ptr<float>();
  const float freg = static_cast<float>(reg);
  at::parallel_for(0, (D + kSub - 1) / kSub, kGmmChunk / kSub, [&](int64_t s0, int64_t s1) {
    double acc[kSub];
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t lo = s * kSub, n = std::min(kSub, D - lo);
      std::fill(acc, acc + n, 0.0);
      for (const int64_t k : active) {
        prior_block(acc, tp + lo, mp + k * D + lo, vp + k * D + lo,
                    static_cast<float>(1.0 / np[k]), freg, rp[k], n);
      }
      for (int64_t i = 0; i < n; ++i) gp[lo + i] += static_cast<float>(scale * acc[i]);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lift_ext, CPU, m) {
  m.impl("gmm_estep", &gmm_estep_cpu);
  m.impl("gmm_mstep_", &gmm_mstep_cpu);
  m.impl("gmm_prior_grad_", &gmm_prior_grad_cpu);
}

}  // namespace lift_ext
