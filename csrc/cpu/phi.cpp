// CPU kernel of phi_step_ (see lift_ext/phi.h): noise for a block of element groups, then the
// element update, over at::parallel_for ranges aligned to groups of 4.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "lift_ext/cpu_normals.h"
#include "lift_ext/phi.h"
#include "lift_ext/phi_args.h"

namespace lift_ext {
namespace {

constexpr int64_t kBlock = 1024;

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
        fill_normals(s.seed, s.offset, static_cast<uint64_t>(start / 4), (n + 3) / 4, noise);
      }
      for (int64_t i = 0; i < n; ++i) {
        p[start + i] = phi_update_element(p[start + i], sum[start + i],
                                          mu0 ? mu0[start + i] : 0.0f, noise[i], s);
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lift_ext, CPU, m) { m.impl("phi_step_", &phi_step_cpu); }

}  // namespace lift_ext
