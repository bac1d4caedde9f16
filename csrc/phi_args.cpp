#include "lift_ext/phi_args.h"

#include <cmath>

#include <c10/util/Exception.h>

#include "lift_ext/float32_range.h"
#include "lift_ext/overlap.h"

namespace lift_ext {

PhiScalars prepare_phi_call(const at::Tensor& phi, const at::Tensor& sum,
                            const std::optional<at::Tensor>& prior_mean, double lr,
                            double temperature, double sigma, double beta, int64_t num_tasks,
                            bool gibbs, int64_t seed, int64_t offset) {
  TORCH_CHECK(phi.scalar_type() == at::kFloat, "phi must be float32, got ", phi.scalar_type());
  TORCH_CHECK(phi.is_contiguous(), "phi must be contiguous");
  TORCH_CHECK(sum.scalar_type() == at::kFloat, "task_sum must be float32, got ", sum.scalar_type());
  TORCH_CHECK(sum.sizes() == phi.sizes(), "task_sum must have the shape of phi ", phi.sizes(),
              ", got ", sum.sizes());
  TORCH_CHECK(sum.is_contiguous(), "task_sum must be contiguous");
  TORCH_CHECK(sum.device() == phi.device(), "task_sum must be on the device of phi (",
              phi.device(), "), got ", sum.device());
  if (prior_mean) {
    const at::Tensor& m = *prior_mean;
    TORCH_CHECK(m.scalar_type() == at::kFloat, "prior_mean must be float32, got ", m.scalar_type());
    TORCH_CHECK(m.sizes() == phi.sizes(), "prior_mean must have the shape of phi ", phi.sizes(),
                ", got ", m.sizes());
    TORCH_CHECK(m.is_contiguous(), "prior_mean must be contiguous");
    TORCH_CHECK(m.device() == phi.device(), "prior_mean must be on the device of phi (",
                phi.device(), "), got ", m.device());
  }
  const at::Tensor no_tensor;
  check_tensors_disjoint({{"phi", &phi, true},
                          {"task_sum", &sum, false},
                          {"prior_mean", prior_mean ? &*prior_mean : &no_tensor, false}});
  TORCH_CHECK(std::isfinite(lr) && lr >= 0.0, "lr must be a finite number >= 0, got ", lr);
  TORCH_CHECK(std::isfinite(temperature) && temperature >= 0.0,
              "temperature must be a finite number >= 0, got ", temperature);
  TORCH_CHECK(std::isfinite(sigma) && sigma > 0.0, "sigma must be a finite number > 0, got ", sigma);
  TORCH_CHECK(std::isfinite(beta) && beta > 0.0, "beta must be a finite number > 0, got ", beta);
  TORCH_CHECK(num_tasks >= 0, "num_tasks must be >= 0, got ", num_tasks);  // 0: a draw from the prior
  TORCH_CHECK(seed >= 0, "seed must be >= 0, got ", seed);
  TORCH_CHECK(offset >= 0, "offset must be >= 0, got ", offset);

  float32_scalar("temperature", temperature);
  float32_scalar("sigma", sigma);
  float32_scalar("beta", beta);
  const double inv_sigma2 = 1.0 / (sigma * sigma);
  const double inv_beta2 = 1.0 / (beta * beta);
  const double variance = 1.0 / (inv_sigma2 + static_cast<double>(num_tasks) * inv_beta2);
  const double noise_scale =
      gibbs ? std::sqrt(temperature * variance) : std::sqrt(2.0 * lr * temperature);
  return PhiScalars{float32_scalar("lr", lr),
                    float32_scalar("sigma", inv_sigma2, " (as 1 / sigma^2)"),
                    float32_scalar("beta", inv_beta2, " (as 1 / beta^2)"),
                    static_cast<float>(num_tasks),
                    float32_scalar("temperature", noise_scale, " (as the noise scale)"),
                    float32_scalar("sigma", variance, " (as the conditional variance)"),
                    gibbs ? 1 : 0,
                    static_cast<uint64_t>(seed),
                    static_cast<uint64_t>(offset)};
}

}  // namespace lift_ext
