// Validation of the Gaussian-mixture op arguments, shared by the CPU and CUDA implementations
// so both refuse the same inputs with the same messages. Every check runs before anything is
// written.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace lift_ext {

struct GmmSizes {
  int64_t batch;       // B
  int64_t components;  // K
  int64_t dim;         // D
};

// x [B, D] float32; means, m2 [K, D] float32; counts [K] float64, finite, one of them > 0; reg a
// positive normal float. The value checks (counts here, resp below) read the tensor: on CUDA a
// copy to the host, which synchronises the stream.
GmmSizes check_gmm_estep_args(const at::Tensor& x, const at::Tensor& means, const at::Tensor& m2,
                              const at::Tensor& counts, double reg);

// As above (counts without the value check: the M-step fills empty components), plus resp
// [B, K] float64, finite and >= 0.
GmmSizes check_gmm_mstep_args(const at::Tensor& means, const at::Tensor& m2,
                              const at::Tensor& counts, const at::Tensor& x,
                              const at::Tensor& resp);

// grad, theta [D] float32; resp [K] float64, finite and >= 0; scale finite.
GmmSizes check_gmm_prior_grad_args(const at::Tensor& grad, const at::Tensor& theta,
                                   const at::Tensor& means, const at::Tensor& m2,
                                   const at::Tensor& counts, const at::Tensor& resp, double reg,
                                   double scale);

}  // namespace lift_ext
