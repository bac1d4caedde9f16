// Autograd kernels of the in-place ops (registration.cpp marks what each writes: Tensor(a!)):
// autograd sees every mutation as it sees torch's own in-place ops.
//   * Before the write, under grad mode, a written tensor that requires grad is refused: a
//     leaf (or a view of one) with torch's usual message, any other with a message saying the
//     op is not differentiable (call it under torch.no_grad(), as optimizers do). An inference
//     tensor outside inference mode is refused as torch refuses it.
//   * After the write, every written tensor's version counter is bumped, so backward raises
//     torch's "modified by an inplace operation" error when a tensor saved for it was stepped.
// The kernels then run the op below autograd (AutoDispatchBelowADInplaceOrView). Without
// them, the dispatcher's boxed autograd fallback ran instead: these unboxed kernels cost less.
// Inside torch.inference_mode() the autograd keys are skipped, as for torch's ops.
#include <utility>

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include "lift_ext/autograd_rules.h"

namespace lift_ext {
namespace {

using SgldListFn = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                        at::TensorList, double, double, double, double, double, int64_t, int64_t);
using SgldGraphsafeFn = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                             at::TensorList, const at::Tensor&, double, double, double, double,
                             double);
using PhiloxNormalFn = void(const at::Tensor&, int64_t, int64_t);
using PhiStepFn = void(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                       double, double, double, double, int64_t, bool, int64_t, int64_t);
using GmmMstepFn = void(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const at::Tensor&, const at::Tensor&);
using GmmPriorGradFn = void(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                            double);

template <typename Fn>
c10::TypedOperatorHandle<Fn> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

// The lists an SGLD step writes: params, accums, square_avgs.
void check_sgld_written(at::TensorList params, at::TensorList accums, at::TensorList square_avgs) {
  for (const auto& [list, name] : {std::pair{params, "params"}, std::pair{accums, "accum"},
                                   std::pair{square_avgs, "square_avg"}}) {
    for (const at::Tensor& t : list) check_writable(t, name);
  }
}

void bump_sgld_written(at::TensorList params, at::TensorList accums, at::TensorList square_avgs) {
  for (const at::TensorList list : {params, accums, square_avgs}) {
    for (const at::Tensor& t : list) bump_version(t);
  }
}

void sgld_step_list_autograd(at::TensorList params, at::TensorList grads,
                             at::TensorList prior_means, at::TensorList accums,
                             at::TensorList square_avgs, double lr, double temperature,
                             double prior_precision, double alpha, double eps, int64_t seed,
                             int64_t offset) {
  check_sgld_written(params, accums, square_avgs);
  static const auto op = find_op<SgldListFn>("lift_ext::sgld_step_list_");
  {
    const at::AutoDispatchBelowADInplaceOrView below;
    op.call(params, grads, prior_means, accums, square_avgs, lr, temperature, prior_precision,
            alpha, eps, seed, offset);
  }
  bump_sgld_written(params, accums, square_avgs);
}

void sgld_step_graphsafe_autograd(at::TensorList params, at::TensorList grads,
                                  at::TensorList prior_means, at::TensorList accums,
                                  at::TensorList square_avgs, const at::Tensor& rng_state,
                                  double lr, double temperature, double prior_precision,
                                  double alpha, double eps) {
  check_sgld_written(params, accums, square_avgs);
  check_writable(rng_state, "rng_state");
  static const auto op = find_op<SgldGraphsafeFn>("lift_ext::sgld_step_graphsafe_");
  {
    const at::AutoDispatchBelowADInplaceOrView below;
    op.call(params, grads, prior_means, accums, square_avgs, rng_state, lr, temperature,
            prior_precision, alpha, eps);
  }
  bump_sgld_written(params, accums, square_avgs);
  bump_version(rng_state);
}

void philox_normal_autograd(const at::Tensor& out, int64_t seed, int64_t offset) {
  check_writable(out, "out");
  static const auto op = find_op<PhiloxNormalFn>("lift_ext::philox_normal_");
  {
    const at::AutoDispatchBelowADInplaceOrView below;
    op.call(out, seed, offset);
  }
  bump_version(out);
}

void phi_step_autograd(const at::Tensor& phi, const at::Tensor& task_sum,
                       const std::optional<at::Tensor>& prior_mean, double lr, double temperature,
                       double sigma, double beta, int64_t num_tasks, bool gibbs, int64_t seed,
                       int64_t offset) {
  check_writable(phi, "phi");
  static const auto op = find_op<PhiStepFn>("lift_ext::phi_step_");
  {
    const at::AutoDispatchBelowADInplaceOrView below;
    op.call(phi, task_sum, prior_mean, lr, temperature, sigma, beta, num_tasks, gibbs, seed,
            offset);
  }
  bump_version(phi);
}

void gmm_mstep_autograd(const at::Tensor& means, const at::Tensor& m2, const at::Tensor& counts,
                        const at::Tensor& x, const at::Tensor& resp) {
  check_writable(means, "means");
  check_writable(m2, "m2");
  check_writable(counts, "counts");
  static const auto op = find_op<GmmMstepFn>("lift_ext::gmm_mstep_");
  {
    const at::AutoDispatchBelowADInplaceOrView below;
    op.call(means, m2, counts, x, resp);
  }
  bump_version(means);
  bump_version(m2);
  bump_version(counts);
}

void gmm_prior_grad_autograd(const at::Tensor& grad, const at::Tensor& theta,
                             const at::Tensor& means, const at::Tensor& m2,
                             const at::Tensor& counts, const at::Tensor& resp, double reg,
                             double scale) {
  check_writable(grad, "grad");
  static const auto op = find_op<GmmPriorGradFn>("lift_ext::gmm_prior_grad_");
  {
    const at::AutoDispatchBelowADInplaceOrView below;
    op.call(grad, theta, means, m2, counts, resp, reg, scale);
  }
  bump_version(grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(lift_ext, Autograd, m) {
  m.impl("sgld_step_list_", &sgld_step_list_autograd);
  m.impl("sgld_step_graphsafe_", &sgld_step_graphsafe_autograd);
  m.impl("philox_normal_", &philox_normal_autograd);
  m.impl("phi_step_", &phi_step_autograd);
  m.impl("gmm_mstep_", &gmm_mstep_autograd);
  m.impl("gmm_prior_grad_", &gmm_prior_grad_autograd);
}

}  // namespace lift_ext
