// CUDA glue of the Gaussian-mixture op family: argument checks, device guard, current stream,
// workspace, launch check. The kernels are in gmm_kernels.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "lift_ext/gmm.h"
#include "lift_ext/gmm_args.h"

namespace lift_ext {
namespace {

// The E-step's final kernel keeps 16 bytes of shared memory per component and the kernels put
// components on grid.y: 2048 components stay well inside both limits.
constexpr int64_t kGmmMaxCudaComponents = 2048;

void check_cuda(const at::Tensor& means) {
  TORCH_CHECK(means.is_cuda(), "means must be a CUDA tensor here, got ", means.device());
  TORCH_CHECK(means.size(0) <= kGmmMaxCudaComponents, "means: the CUDA mixture kernels support at most ",
              kGmmMaxCudaComponents, " components, got ", means.size(0), " (use the CPU for more)");
}

std::tuple<at::Tensor, at::Tensor> gmm_estep_cuda(const at::Tensor& x, const at::Tensor& means,
                                                  const at::Tensor& m2, const at::Tensor& counts,
                                                  double reg) {
  const GmmSizes sz = check_gmm_estep_args(x, means, m2, counts, reg);
  check_cuda(means);
  const c10::cuda::CUDAGuard guard(means.device());
  auto loglik = at::empty({sz.batch, sz.components}, counts.options());
  auto resp = at::empty({sz.batch, sz.components}, counts.options());
  auto workspace = at::empty({gmm_estep_workspace_doubles(sz.batch, sz.components, sz.dim)},
                             counts.options());
  launch_gmm_estep_cuda(x.data_ptr<float>(), means.data_ptr<float>(), m2.data_ptr<float>(),
                        counts.data_ptr<double>(), sz.batch, sz.components, sz.dim,
                        static_cast<float>(reg), workspace.data_ptr<double>(),
                        loglik.data_ptr<double>(), resp.data_ptr<double>(),
                        c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {loglik, resp};
}

void gmm_mstep_cuda(const at::Tensor& means, const at::Tensor& m2, const at::Tensor& counts,
                    const at::Tensor& x, const at::Tensor& resp) {
  const GmmSizes sz = check_gmm_mstep_args(means, m2, counts, x, resp);
  check_cuda(means);
  const c10::cuda::CUDAGuard guard(means.device());
  launch_gmm_mstep_cuda(means.data_ptr<float>(), m2.data_ptr<float>(), counts.data_ptr<double>(),
                        x.data_ptr<float>(), resp.data_ptr<double>(), sz.batch, sz.components,
                        sz.dim, c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void gmm_prior_grad_cuda(const at::Tensor& grad, const at::Tensor& theta, const at::Tensor& means,
                         const at::Tensor& m2, const at::Tensor& counts, const at::Tensor& resp,
                         double reg, double scale) {
  const GmmSizes sz = check_gmm_prior_grad_args(grad, theta, means, m2, counts, resp, reg, scale);
  check_cuda(means);
  const c10::cuda::CUDAGuard guard(means.device());
  launch_gmm_prior_grad_cuda(grad.data_ptr<float>(), theta.data_ptr<float>(),
                             means.data_ptr<float>(), m2.data_ptr<float>(),
                             counts.data_ptr<double>(), resp.data_ptr<double>(), sz.components,
                             sz.dim, static_cast<float>(reg), scale,
                             c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(lift_ext, CUDA, m) {
  m.impl("gmm_estep", &gmm_estep_cuda);
  m.impl("gmm_mstep_", &gmm_mstep_cuda);
  m.impl("gmm_prior_grad_", &gmm_prior_grad_cuda);
}

}  // namespace lift_ext
