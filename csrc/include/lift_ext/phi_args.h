// Validation of the phi_step_ arguments, shared by the CPU and CUDA implementations.
#pragma once

#include <optional>

#include <ATen/core/Tensor.h>

#include "lift_ext/phi.h"

namespace lift_ext {

// Checks every argument (before anything is written) and converts the model's
// hyper-parameters into kernel scalars.
PhiScalars prepare_phi_call(const at::Tensor& phi, const at::Tensor& sum,
                            const std::optional<at::Tensor>& prior_mean, double lr,
                            double temperature, double sigma, double beta, int64_t num_tasks,
                            bool gibbs, int64_t seed, int64_t offset);

}  // namespace lift_ext
