// CPU kernel of phi_step_ (see lift_ext/phi.h): noise for a block of element groups (the
// block's rows requested meanwhile), then the element update, over at::parallel_for ranges
// aligned to groups of 4.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>

#include "lift_ext/cpu_normals.h"
#include "lift_ext/phi.h"
#include "lift_ext/phi_args.h"

namespace lift_ext {
namespace {

constexpr int64_t kBlock = 1024;

// p[i] <- phi_update_case<kGibbs, kNoise>(p[i], sum[i], mu0 ? mu0[i] : 0, noise[i], s) for
// i < n, with no branch in the loop so that it vectorises (the scalars are a local copy that
// the stores to p cannot change; the tensors do not overlap, which prepare_phi_call checks).
template <bool kGibbs, bool kNoise>
void update_block(float* __restrict p, const float* __restrict sum, const float* __restrict mu0,
                  const float* __restrict noise, int64_t n, const PhiScalars s) {
  if (mu0 != nullptr) {
    for (int64_t i = 0; i < n; ++i) p[i] = phi_update_case<kGibbs, kNoise>(p[i], sum[i], mu0[i], noise[i], s);
  } else {
    for (int64_t i = 0; i < n; ++i) p[i] = phi_update_case<kGibbs, kNoise>(p[i], sum[i], 0.0f, noise[i], s);
  }
}

// update_block for the case of `s` (phi_update_element's choice, made once per block).
void update_block_of(float* p, const float* sum, const float* mu0, const float* noise, int64_t n,
                     const PhiScalars& s) {
  const bool noise_on = s.noise_scale != 0.0f;
  if (s.gibbs) {
    noise_on ? update_block<true, true>(p, sum, mu0, noise, n, s) : update_block<true, false>(p, sum, mu0, noise, n, s);
  } else {
    noise_on ? update_block<false, true>(p, sum, mu0, noise, n, s) : update_block<false, false>(p, sum, mu0, noise, n, s);
  }
}

void phi_step_cpu(const at::Tensor& phi, const at::Tensor& task_sum,
                  const std::optional<at::Tensor>& prior_mean, double lr, double temperature,
                  double sigma, double beta, int64_t num_tasks, bool gibbs, int64_t seed,
                  int64_t offset) {
  const PhiScalars s = prepare_phi_call(phi, task_sum, prior_mean, lr, temperature, sigma, beta,
                                        num_tasks, gibbs, seed, offset);
  float* p = phi.data_ptr<float>();
  const float* sum = task_sum.data_ptr<float>();
  const float* mu0 = prior_mean ? prior_mean->data_ptr<float>() : nullptr;
  const int64_t numel = phi.numel();
  at::parallel_for(0, (numel + kBlock - 1) / kBlock, 8, [&](int64_t b0, int64_t b1) {
    float noise[kBlock];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t start = b * kBlock;
      const int64_t n = std::min(kBlock, numel - start);
      if (s.noise_scale != 0.0f) {
        NormalsPrefetch rows;  // the rows the update reads, requested during the normals
        rows.count = n;
        for (const float* array : {static_cast<const float*>(p), sum, mu0}) rows.add(array, start, sizeof(float));
        fill_normals(s.seed, s.offset, static_cast<uint64_t>(start / 4), (n + 3) / 4, noise, &rows);
      }
      update_block_of(p + start, sum + start, mu0 ? mu0 + start : nullptr, noise, n, s);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lift_ext, CPU, m) { m.impl("phi_step_", &phi_step_cpu); }

}  // namespace lift_ext
