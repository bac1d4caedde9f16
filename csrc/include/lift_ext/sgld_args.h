// Validation of the SGLD op arguments and their conversion into kernel slots; shared by the
// CPU and CUDA implementations so both refuse the same inputs with the same messages.
#pragma once

#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "lift_ext/sgld.h"

namespace lift_ext {

struct SgldCall {
  std::vector<SgldSlot> slots;  // tensors with at least one element, in list order
  GradDtype grad_dtype = GradDtype::kFloat32;
  SgldScalars scalars{};
  int64_t total_numel = 0;
};

// Checks the scalars of a call and converts them into kernel units (`preconditioned`: the
// call has square averages, so alpha and eps are used and checked).
SgldScalars prepare_sgld_scalars(double lr, double temperature, double prior_precision,
                                 double alpha, double eps, int64_t seed, int64_t offset,
                                 bool preconditioned);

// Checks the tensors of a call (dtype, device, shape, layout, and no tensor the call writes
// sharing memory with another: see overlap.h) and returns their slots; `scalars` is left
// unset. The part of a call that a TensorTable checks once.
SgldCall prepare_sgld_tensors(at::TensorList params, at::TensorList grads,
                              at::TensorList prior_means, at::TensorList accums,
                              at::TensorList square_avgs);

// Checks the graph-safe form of an SGLD step: the scalar seed and offset left at 0 (rng_state
// holds them), rng_state int64, shape [2], contiguous, on `device`.
void check_rng_state(const at::Tensor& rng_state, const at::Device& device, int64_t seed,
                     int64_t offset);

// The values of a checked CPU rng_state: refused unless seed >= 0 and 0 <= offset < 2^63 - 1
// (the step's offset += 1 must not wrap). Returns its data ([seed, offset]).
int64_t* checked_cpu_rng_state(const at::Tensor& rng_state);

// Checks a list call (a flat call is a list of one): the scalars, then the tensors. Every
// check runs before anything is written, so a refused call leaves all tensors untouched.
SgldCall prepare_sgld_call(at::TensorList params, at::TensorList grads, at::TensorList prior_means,
                           at::TensorList accums, at::TensorList square_avgs, double lr,
                           double temperature, double prior_precision, double alpha, double eps,
                           int64_t seed, int64_t offset);

// Checks the output of philox_normal_.
void check_philox_normal_args(const at::Tensor& out, int64_t seed, int64_t offset);

// Checks the arguments of philox4x32_10 and returns an empty int64 [N, 4] result.
at::Tensor check_philox_words_args(const at::Tensor& counters, const at::Tensor& keys);

}  // namespace lift_ext
