// CUDA glue of phi_step_: checks, device guard, current stream, launch check.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "lift_ext/phi.h"
#include "lift_ext/phi_args.h"

namespace lift_ext {
namespace {

void phi_step_cuda(const at::Tensor& phi, const at::Tensor& task_sum,
                   const std::optional<at::Tensor>& prior_mean, double lr, double temperature,
                   double sigma, double beta, int64_t num_tasks, bool gibbs, int64_t seed,
                   int64_t offset) {
  const PhiScalars s = prepare_phi_call(phi, task_sum, prior_mean, lr, temperature, sigma, beta,
                                        num_tasks, gibbs, seed, offset);
  const c10::cuda::CUDAGuard guard(phi.device());
  launch_phi_step_cuda(phi.data_ptr<float>(), task_sum.data_ptr<float>(),
                       prior_mean ? prior_mean->data_ptr<float>() : nullptr, phi.numel(), s,
                       c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(lift_ext, CUDA, m) { m.impl("phi_step_", &phi_step_cuda); }

}  // namespace lift_ext
