// The SGLD update of one element, shared by the CPU and CUDA kernels, and the raw-pointer
// launch interface of the CUDA kernels (so the .cu files need no ATen headers).
//
// Convention (docs/design.md section 2):
//   theta <- theta - lr * G * (g + lam * (theta - c)) + sqrt(2 * lr * T * G) * xi,  xi ~ N(0, 1)
// with G = 1 unless RMSprop preconditioning is on (pSGLD, no Gamma correction term):
//   v <- g^2 if v == 0 else alpha * v + (1 - alpha) * g^2,   G = 1 / (sqrt(v) + eps).
// v == 0 means "no nonzero gradient seen yet": the average starts at the first one's square
// (from 0 the first step would be lr / sqrt(1 - alpha), 10 lr at alpha = 0.99, whatever the
// gradient's scale, also for a weight whose gradients are 0 for a while and then are not).
// lr is half the paper's eta. With T = 0 no noise is drawn and the step is exactly SGD with
// weight decay lam toward c. An accumulator, when given, receives theta_new - theta_old.
#pragma once

#include <cstdint>

#include "lift_ext/philox.h"

namespace lift_ext {

// Scalars of one SGLD call, already converted to the kernel's units.
struct SgldScalars {
  float lr;
  float prior_precision;  // lam
  float noise_scale;      // sqrt(2 * lr * T), 0 when no noise is drawn
  float alpha;            // RMSprop decay (used only with square_avg)
  float eps;              // RMSprop epsilon (used only with square_avg)
  uint64_t seed;
  uint64_t offset;
};

// Which optional terms an update has. The CPU loop fixes them at compile time (one
// vectorised loop per combination, the branches folded away after inlining); the CUDA
// kernel sets them per call and tensor.
struct SgldTerms {
  bool prior;    // prior_precision != 0: the pull lam * (theta - c)
  bool precond;  // square_avg given: RMSprop preconditioning
  bool noise;    // noise_scale != 0
  bool accum;    // accumulator given
};

// The update of one element, on values: the only place the SGLD arithmetic is written (the
// CPU loop in csrc/cpu/sgld.cpp and the CUDA kernel both call it, so their results are
// bitwise equal). `center` is the prior mean c (read only with terms.prior); square_avg and
// accum are the element's running average v and accumulator, read and written only with
// terms.precond / terms.accum; `noise` is read only with terms.noise. Returns theta_new.
LIFT_HOST_DEVICE float sgld_update_value(float theta, float grad, float noise, float center,
                                         float& square_avg, float& accum, SgldTerms terms,
                                         const SgldScalars& s) {
  float drift = grad;
  if (terms.prior) drift = grad + s.prior_precision * (theta - center);
  float step = s.lr * drift;
  float noise_term = 0.0f;
  if (terms.noise) noise_term = s.noise_scale * noise;
  if (terms.precond) {
    const float g2 = grad * grad;
    // Both candidates computed, then a select: a branch-free loop the CPU can vectorise.
    const float decayed = s.alpha * square_avg + (1.0f - s.alpha) * g2;
    const float v = square_avg == 0.0f ? g2 : decayed;
    square_avg = v;
    const float precond = 1.0f / (sqrtf(v) + s.eps);
    step = step * precond;
    if (terms.noise) noise_term = noise_term * sqrtf(precond);
  }
  float updated = theta - step;
  if (terms.noise) updated = updated + noise_term;
  if (terms.accum) accum = accum + (updated - theta);
  return updated;
}

enum class GradDtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// One tensor of an SGLD call. `base` is the index of its first element in the flattened
// list: it fixes the noise this tensor receives.
struct SgldSlot {
  float* param;
  const void* grad;
  const float* prior_mean;
  float* accum;
  float* square_avg;
  int64_t numel;
  int64_t base;
};

#if defined(LIFT_EXT_WITH_CUDA) || defined(__CUDACC__)
// Launches the fused update over `num_slots` tensors on `stream` (a cudaStream_t).
// All slots share the grad dtype and which optional arrays are present. With rng_state
// (device memory, int64 [seed, offset]) the kernels read seed and offset from it instead of
// scalars.seed / scalars.offset (graph-safe form; advance it with launch_advance_offset_cuda).
void launch_sgld_cuda(const SgldSlot* slots, int64_t num_slots, GradDtype grad_dtype,
                      const SgldScalars& scalars, void* stream,
                      const int64_t* rng_state = nullptr);

// The same step over a table of `num_slots` slots held in device memory (a TensorTable's),
// covering the flattened element range [begin, end): one launch whatever the length, the
// launch parameters hold only the table's address.
void launch_sgld_table_cuda(const SgldSlot* device_slots, int64_t num_slots, int64_t begin,
                            int64_t end, GradDtype grad_dtype, const SgldScalars& scalars,
                            void* stream, const int64_t* rng_state = nullptr);

// rng_state[1] += 1 on the device (one thread), ordered after the step on `stream`.
void launch_advance_offset_cuda(int64_t* rng_state, void* stream);

// Writes normals(seed, offset) for elements 0..numel-1 into out (device memory).
void launch_philox_normal_cuda(float* out, int64_t numel, uint64_t seed, uint64_t offset,
                               void* stream);

// words[i, :] = Philox4x32-10(counters[i, :], keys[i, :]); int64 arrays holding uint32 words.
void launch_philox_words_cuda(const int64_t* counters, const int64_t* keys, int64_t* words,
                              int64_t n, void* stream);
#endif

}  // namespace lift_ext
