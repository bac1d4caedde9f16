// The shared-prior (phi) update of SGLD-Gibbs (docs/design.md section 3), one element, shared by the
// CPU and CUDA kernels, and the raw-pointer CUDA launcher.
//
// State: phi, S = sum_i theta_i over the N tasks, prior mean mu0 (0 when absent).
// Conditional: p(phi | thetas) = N(m, v I) with v = 1 / (1/sigma^2 + N/beta^2),
//              m = v * (mu0/sigma^2 + S/beta^2).
// Langevin (paper eq. 9, J = (S - N phi)/beta^2 formed in the kernel):
//   phi <- phi - lr * ((phi - mu0)/sigma^2 - (S - N phi)/beta^2) + sqrt(2 lr T) xi
// Exact Gibbs draw at temperature T:  phi <- m + sqrt(T v) xi.
// xi: the Philox stream of philox.h at element index i (counter (i // 4, offset)).
#pragma once

#include <cstdint>

#include "lift_ext/philox.h"

namespace lift_ext {

struct PhiScalars {
  float lr;              // Langevin step (unused by Gibbs)
  float inv_sigma2;      // 1 / sigma^2
  float inv_beta2;       // 1 / beta^2
  float num_tasks;       // N
  float noise_scale;     // Langevin: sqrt(2 lr T); Gibbs: sqrt(T v); 0 = no noise
  float gibbs_variance;  // v (Gibbs only)
  int gibbs;             // 1: exact draw, 0: Langevin step
  uint64_t seed;
  uint64_t offset;
};

// The update with the case fixed at compile time (kGibbs: s.gibbs, kNoise: s.noise_scale != 0),
// so that a loop over elements has no branch in it; phi_update_element picks the case.
template <bool kGibbs, bool kNoise>
LIFT_HOST_DEVICE float phi_update_case(float phi, float sum, float mu0, float noise, const PhiScalars& s) {
  float updated;
  if (kGibbs) {
    updated = s.gibbs_variance * (mu0 * s.inv_sigma2 + sum * s.inv_beta2);
  } else {
    const float drift = (phi - mu0) * s.inv_sigma2 - (sum - s.num_tasks * phi) * s.inv_beta2;
    updated = phi - s.lr * drift;
  }
  if (kNoise) updated = updated + s.noise_scale * noise;
  return updated;
}

LIFT_HOST_DEVICE float phi_update_element(float phi, float sum, float mu0, float noise,
                                          const PhiScalars& s) {
  const bool noise_on = s.noise_scale != 0.0f;
  if (s.gibbs) {
    return noise_on ? phi_update_case<true, true>(phi, sum, mu0, noise, s)
                    : phi_update_case<true, false>(phi, sum, mu0, noise, s);
  }
  return noise_on ? phi_update_case<false, true>(phi, sum, mu0, noise, s)
                  : phi_update_case<false, false>(phi, sum, mu0, noise, s);
}

#if defined(LIFT_EXT_WITH_CUDA) || defined(__CUDACC__)
// phi[i] <- phi_update_element(phi[i], sum[i], mu0 ? mu0[i] : 0, xi_i) for i < numel.
void launch_phi_step_cuda(float* phi, const float* sum, const float* mu0, int64_t numel,
                          const PhiScalars& scalars, void* stream);
#endif

}  // namespace lift_ext
