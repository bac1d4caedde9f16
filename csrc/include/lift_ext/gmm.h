// Diagonal Gaussian-mixture statistics shared by the CPU and CUDA kernels, and the raw-pointer
// launch interface of the CUDA kernels (so the .cu file needs no ATen headers).
//
// State of K components over vectors of length D (docs/design.md section 4):
//   counts n_k (float64), means mu_kd and centred second moments M2_kd (float32),
//   var_kd = M2_kd / n_k + reg,   alpha_k = n_k / sum_j n_j.
// E-step:  loglik_bk = log alpha_k - 1/2 sum_d [ (x_bd - mu_kd)^2 / var_kd + log var_kd + log 2pi ]
//          resp_bk  = softmax_k(loglik_bk)
// The per-element terms are float32, their sums over d float64 in a fixed order per backend:
// per chunk of kGmmChunk elements, then the chunk partials. Results do not depend on the number
// of threads or on the launch configuration. The CPU (interleaved lanes, chunks in order) and
// the CUDA kernels (per-thread strided sums, a reduction tree) order the float64 additions
// differently, so the two agree to about 1e-15 relative, not bitwise; the M-step and the
// prior gradient are bitwise equal for equal responsibilities.
// M-step (mini-batch online EM): with the batch's responsibilities q_bk from the parameters at
// batch start, W_k = sum_b q_bk, batch mean m_kd = sum_b q_bk x_bd / W_k and batch moment
// S_kd = sum_b q_bk (x_bd - m_kd)^2 are merged into the running statistics (Chan et al.):
//   n' = n + W,  delta = m - mu,  mu' = mu + delta W / n',  M2' = M2 + S + delta^2 n W / n'.
// For B = 1 this is Welford's update: mu' = mu + (q/n') delta, M2' = M2 + q delta (x - mu').
// Components with W_k == 0 are left untouched (exactly what the formulas give).
#pragma once

#include <cstdint>

#include "lift_ext/philox.h"

namespace lift_ext {

// Elements of D per reduction chunk: fixes the summation order on every backend.
constexpr int64_t kGmmChunk = 4096;
constexpr double kLog2Pi = 1.83787706640934548356;

// var_kd in float32 from M2_kd and 1 / n_k (both backends use this exact expression).
LIFT_HOST_DEVICE float gmm_variance(float m2, float inv_count, float reg) {
  return m2 * inv_count + reg;
}

// Natural log of a positive normal float32, a few ulps from the exact value, built only from
// IEEE-exact operations so that it vectorises on the CPU and rounds the same on the GPU.
LIFT_HOST_DEVICE float gmm_log(float v) { return portable_log_unit(v); }

// Merges a batch's moments (batch_mean m, batch_m2 S, weight w > 0) into one running
// (mean, m2) pair whose component had `count` = n_k before the merge; float64 arithmetic.
LIFT_HOST_DEVICE void gmm_merge_moments(float& mean, float& m2, double batch_mean,
                                        double batch_m2, double w, double count) {
  const double updated = count + w;
  const double delta = batch_mean - static_cast<double>(mean);
  mean = static_cast<float>(static_cast<double>(mean) + delta * (w / updated));
  m2 = static_cast<float>(static_cast<double>(m2) + batch_m2 +
                          delta * delta * (count * w / updated));
}

// (x - mu)^2 / var of one element of the E-step's quadratic form, from inv_var = 1 / var.
LIFT_HOST_DEVICE float gmm_quad_term(float x, float mean, float inv_var) {
  const float t = x - mean;
  return t * t * inv_var;
}

// The two sample terms of an element's batch moments: sum_b q_b x_b (then m = sum / w) and
// S = sum_b q_b (x_b - m)^2, each summed over b in sample order on every backend.
LIFT_HOST_DEVICE double gmm_weighted_sample(double q, float x) {
  return q * static_cast<double>(x);
}
LIFT_HOST_DEVICE double gmm_weighted_square(double q, float x, double batch_mean) {
  const double t = static_cast<double>(x) - batch_mean;
  return q * t * t;
}

// The batch moments of one element: xs points at x_0d, consecutive samples `stride` elements
// apart; q_b = q[b * q_stride]; w = sum_b q_b > 0. For B = 1, m = x and S = 0 exactly.
LIFT_HOST_DEVICE void gmm_batch_moments(const float* xs, int64_t stride, const double* q,
                                        int64_t q_stride, int64_t batch, double w,
                                        double& batch_mean, double& batch_m2) {
  batch_m2 = 0.0;
  if (batch == 1) {
    batch_mean = static_cast<double>(xs[0]);
    return;
  }
  double s = 0.0;
  for (int64_t b = 0; b < batch; ++b) s += gmm_weighted_sample(q[b * q_stride], xs[b * stride]);
  batch_mean = s / w;
  for (int64_t b = 0; b < batch; ++b) {
    batch_m2 += gmm_weighted_square(q[b * q_stride], xs[b * stride], batch_mean);
  }
}

// r_k (theta - mu) / var of one element and component, in float64: the term the prior
// gradient sums over components (float32 drift, weighted by the float64 responsibility).
LIFT_HOST_DEVICE double gmm_prior_term(double r, float theta, float mean, float m2,
                                       float inv_count, float reg) {
  return r * static_cast<double>((theta - mean) / gmm_variance(m2, inv_count, reg));
}

// loglik and resp of one sample from its sums over d: quad_k = sum_d (x_d - mu_kd)^2 / var_kd,
// logdet_k = sum_d log var_kd. Components with n_k <= 0 get loglik -inf. log and exp are
// the float64 ones of the backend.
LIFT_HOST_DEVICE void gmm_finalize_row(const double* quad, const double* logdet,
                                       const double* counts, int64_t components, int64_t dim,
                                       double* loglik, double* resp) {
  double total = 0.0;
  for (int64_t k = 0; k < components; ++k) total += counts[k] > 0.0 ? counts[k] : 0.0;
  const double log_total = log(total);
  const double constant = static_cast<double>(dim) * kLog2Pi;
  double best = -INFINITY;
  for (int64_t k = 0; k < components; ++k) {
    const double ll = counts[k] > 0.0
                          ? log(counts[k]) - log_total - 0.5 * (quad[k] + logdet[k] + constant)
                          : -INFINITY;
    loglik[k] = ll;
    best = ll > best ? ll : best;
  }
  double norm = 0.0;
  for (int64_t k = 0; k < components; ++k) norm += exp(loglik[k] - best);
  for (int64_t k = 0; k < components; ++k) resp[k] = exp(loglik[k] - best) / norm;
}

#if defined(LIFT_EXT_WITH_CUDA) || defined(__CUDACC__)
// E-step on device memory. x [B, D], means / m2 [K, D] float32; counts [K] float64;
// writes loglik and resp [B, K] float64. `workspace` holds gmm_estep_workspace_doubles()
// float64 values.
int64_t gmm_estep_workspace_doubles(int64_t batch, int64_t components, int64_t dim);
void launch_gmm_estep_cuda(const float* x, const float* means, const float* m2,
                           const double* counts, int64_t batch, int64_t components, int64_t dim,
                           float reg, double* workspace, double* loglik, double* resp,
                           void* stream);

// M-step in place on means, m2 [K, D] and counts [K], from x [B, D] and resp [B, K].
void launch_gmm_mstep_cuda(float* means, float* m2, double* counts, const float* x,
                           const double* resp, int64_t batch, int64_t components, int64_t dim,
                           void* stream);

// grad_d += scale * sum_k resp_k (theta_d - mu_kd) / var_kd for d < dim.
void launch_gmm_prior_grad_cuda(float* grad, const float* theta, const float* means,
                                const float* m2, const double* counts, const double* resp,
                                int64_t components, int64_t dim, float reg, double scale,
                                void* stream);
#endif

}  // namespace lift_ext
