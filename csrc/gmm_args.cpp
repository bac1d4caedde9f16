#include "lift_ext/gmm_args.h"

#include <cfloat>
#include <cmath>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "lift_ext/overlap.h"

namespace lift_ext {
namespace {

void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype,
                  const at::Tensor& anchor, const char* anchor_name) {
  TORCH_CHECK(t.defined(), name, " is undefined");
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == anchor.device(), name, " must be on the same device as ", anchor_name,
              " (", anchor.device(), "), got ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef expected,
                 const char* meaning) {
  TORCH_CHECK(t.sizes() == expected, name, " must have shape ", expected, " ", meaning, ", got ",
              t.sizes());
}

GmmSizes check_mixture(const at::Tensor& means, const at::Tensor& m2, const at::Tensor& counts) {
  TORCH_CHECK(means.defined(), "means is undefined");
  TORCH_CHECK(means.dim() == 2, "means must be 2-D [K, D], got shape ", means.sizes());
  TORCH_CHECK(means.size(0) >= 1 && means.size(1) >= 1,
              "means must have at least one component and one element, got shape ",
              means.sizes());
  check_tensor(means, "means", at::kFloat, means, "means");
  check_tensor(m2, "m2", at::kFloat, means, "means");
  check_shape(m2, "m2", means.sizes(), "(the shape of means [K, D])");
  check_tensor(counts, "counts", at::kDouble, means, "means");
  check_shape(counts, "counts", {means.size(0)}, "([K])");
  return GmmSizes{0, means.size(0), means.size(1)};
}

void check_samples(const at::Tensor& x, const at::Tensor& means, GmmSizes& sizes) {
  TORCH_CHECK(x.defined(), "x is undefined");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == sizes.dim, "x must have shape [B, ", sizes.dim,
              "] (D of means), got ", x.sizes());
  check_tensor(x, "x", at::kFloat, means, "means");
  sizes.batch = x.size(0);
}

void check_reg(double reg) {
  TORCH_CHECK(std::isfinite(reg) && reg >= FLT_MIN && reg <= FLT_MAX,
              "reg must be a finite float32 >= ", FLT_MIN, " (the variance floor), got ", reg);
}

// The values of a float64 tensor, read on the host (on CUDA: one copy of its numel doubles,
// which synchronises the stream; these tensors are [K] or [B, K]).
at::Tensor host_values(const at::Tensor& t) { return t.is_cpu() ? t : t.to(at::kCPU); }

// counts: finite, at least one n_k > 0 (with none, every loglik is -inf and no responsibility
// is defined). n_k <= 0 marks an empty component.
void check_counts_values(const at::Tensor& counts) {
  const at::Tensor host = host_values(counts);
  const double* n = host.data_ptr<double>();
  bool fitted = false;
  for (int64_t k = 0; k < host.numel(); ++k) {
    TORCH_CHECK(std::isfinite(n[k]), "counts must be finite, got ", n[k], " at component ", k);
    fitted = fitted || n[k] > 0.0;
  }
  TORCH_CHECK(fitted, "counts must have a positive entry: with every n_k <= 0 the mixture has no "
              "component and no responsibility is defined");
}

// resp: probabilities, finite and >= 0 (an M-step or prior gradient weighted by NaN or a
// negative weight would write NaN or move a component away from its samples).
void check_resp_values(const at::Tensor& resp) {
  const at::Tensor host = host_values(resp);
  const double* q = host.data_ptr<double>();
  for (int64_t i = 0; i < host.numel(); ++i) {
    TORCH_CHECK(std::isfinite(q[i]) && q[i] >= 0.0,
                "resp must be finite and >= 0 (responsibilities), got ", q[i], " at flat index ", i);
  }
}

}  // namespace

GmmSizes check_gmm_estep_args(const at::Tensor& x, const at::Tensor& means, const at::Tensor& m2,
                              const at::Tensor& counts, double reg) {
  GmmSizes sizes = check_mixture(means, m2, counts);
  check_samples(x, means, sizes);
  check_reg(reg);
  check_counts_values(counts);
  return sizes;
}

GmmSizes check_gmm_mstep_args(const at::Tensor& means, const at::Tensor& m2,
                              const at::Tensor& counts, const at::Tensor& x,
                              const at::Tensor& resp) {
  GmmSizes sizes = check_mixture(means, m2, counts);
  check_samples(x, means, sizes);
  check_tensor(resp, "resp", at::kDouble, means, "means");
  check_shape(resp, "resp", {sizes.batch, sizes.components}, "([B, K])");
  check_tensors_disjoint({{"means", &means, true},
                          {"m2", &m2, true},
                          {"counts", &counts, true},
                          {"x", &x, false},
                          {"resp", &resp, false}});
  check_resp_values(resp);
  return sizes;
}

GmmSizes check_gmm_prior_grad_args(const at::Tensor& grad, const at::Tensor& theta,
                                   const at::Tensor& means, const at::Tensor& m2,
                                   const at::Tensor& counts, const at::Tensor& resp, double reg,
                                   double scale) {
  GmmSizes sizes = check_mixture(means, m2, counts);
  check_tensor(grad, "grad", at::kFloat, means, "means");
  check_shape(grad, "grad", {sizes.dim}, "([D] of means)");
  check_tensor(theta, "theta", at::kFloat, means, "means");
  check_shape(theta, "theta", {sizes.dim}, "([D] of means)");
  check_tensor(resp, "resp", at::kDouble, means, "means");
  check_shape(resp, "resp", {sizes.components}, "([K])");
  check_reg(reg);
  TORCH_CHECK(std::isfinite(scale), "scale must be finite, got ", scale);
  check_tensors_disjoint({{"grad", &grad, true},
                          {"theta", &theta, false},
                          {"means", &means, false},
                          {"m2", &m2, false},
                          {"counts", &counts, false},
                          {"resp", &resp, false}});
  check_resp_values(resp);
  sizes.batch = 1;
  return sizes;
}

}  // namespace lift_ext
