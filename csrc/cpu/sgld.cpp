// CPU kernels of the SGLD op family: sgld_step_list_ (both forms), philox_normal_,
// fill_normals_on_ (CPU only), philox4x32_10, and run_sgld_cpu, which the TensorTable op (csrc/table.cpp) also runs.
//
// Work is split over the flattened element range with at::parallel_for (OpenMP); each thread
// walks its range in blocks of kBlock elements: normals for the block's element groups first
// (a vectorisable loop, compiled for AVX-512 / AVX2 / baseline and picked at load time, once
// per block whatever the number of tensors in it), then the update of each tensor's piece
// (a vectorisable loop per combination of optional arrays).
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "lift_ext/cpu_normals.h"
#include "lift_ext/sgld.h"
#include "lift_ext/sgld_args.h"
#include "lift_ext/sgld_run.h"

namespace lift_ext {
namespace {

constexpr int64_t kBlock = 1024;          // elements per inner block (a multiple of 4)
constexpr int64_t kGrain = 32 * kBlock;   // elements per parallel task

template <typename T>
void to_float(const T* __restrict in, int64_t n, float* __restrict out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(in[i]);
}

// The update over n elements: sgld_update_value per element, with the optional terms fixed
// at compile time so that the loop vectorises (compiled for AVX-512 / AVX2 / baseline and
// picked at load time; the same IEEE operations in every variant, so the same bits).
template <bool kPrior, bool kPriorMean, bool kAccum, bool kPrecond, bool kNoise>
__attribute__((target_clones("avx512f", "avx2", "default")))
void update_block(float* __restrict theta, const float* __restrict grad,
                  const float* __restrict noise, const float* __restrict prior_mean,
                  float* __restrict accum, float* __restrict square_avg, int64_t n,
                  const SgldScalars& s) {
  constexpr SgldTerms terms{kPrior, kPrecond, kNoise, kAccum};
  for (int64_t i = 0; i < n; ++i) {
    float v = kPrecond ? square_avg[i] : 0.0f;
    float acc = kAccum ? accum[i] : 0.0f;
    theta[i] = sgld_update_value(theta[i], grad[i], kNoise ? noise[i] : 0.0f,
                                 kPriorMean ? prior_mean[i] : 0.0f, v, acc, terms, s);
    if constexpr (kPrecond) square_avg[i] = v;
    if constexpr (kAccum) accum[i] = acc;
  }
}

using UpdateFn = void (*)(float*, const float*, const float*, const float*, float*, float*,
                          int64_t, const SgldScalars&);

template <bool kPrior, bool kPriorMean, bool kAccum, bool kPrecond>
UpdateFn pick_noise(bool noise) {
  return noise ? &update_block<kPrior, kPriorMean, kAccum, kPrecond, true>
               : &update_block<kPrior, kPriorMean, kAccum, kPrecond, false>;
}
template <bool kPrior, bool kPriorMean, bool kAccum>
UpdateFn pick_precond(bool precond, bool noise) {
  return precond ? pick_noise<kPrior, kPriorMean, kAccum, true>(noise)
                 : pick_noise<kPrior, kPriorMean, kAccum, false>(noise);
}
template <bool kPrior, bool kPriorMean>
UpdateFn pick_accum(bool accum, bool precond, bool noise) {
  return accum ? pick_precond<kPrior, kPriorMean, true>(precond, noise)
               : pick_precond<kPrior, kPriorMean, false>(precond, noise);
}
UpdateFn pick_update(bool prior, bool prior_mean, bool accum, bool precond, bool noise) {
  if (!prior) return pick_accum<false, false>(accum, precond, noise);
  return prior_mean ? pick_accum<true, true>(accum, precond, noise)
                    : pick_accum<true, false>(accum, precond, noise);
}

// Elements [lo, hi) of the flattened call that lie in `slot` (and in one block), with the
// block's normals in `noise` (noise[0] is the first normal of element group lo / 4 rounded
// down to the block's first group; see run_range).
void run_piece(const SgldSlot& slot, int64_t lo, int64_t hi, const float* noise,
               GradDtype grad_dtype, const SgldScalars& s, UpdateFn update, float* grad_buf) {
  const int64_t n = hi - lo;
  const int64_t local = lo - slot.base;
  const float* grad = nullptr;
  switch (grad_dtype) {
    case GradDtype::kFloat32:
      grad = static_cast<const float*>(slot.grad) + local;
      break;
    case GradDtype::kBFloat16:
      to_float(static_cast<const c10::BFloat16*>(slot.grad) + local, n, grad_buf);
      grad = grad_buf;
      break;
    case GradDtype::kFloat16:
      to_float(static_cast<const c10::Half*>(slot.grad) + local, n, grad_buf);
      grad = grad_buf;
      break;
  }
  update(slot.param + local, grad, noise, slot.prior_mean ? slot.prior_mean + local : nullptr,
         slot.accum ? slot.accum + local : nullptr,
         slot.square_avg ? slot.square_avg + local : nullptr, n, s);
}

// The arrays of `slot` from flattened element `first` up to `stop` (at most), for fill_normals
// to request while it draws their block's normals (NormalsPrefetch in cpu_normals.h); `first`
// may lie up to 3 elements before the slot (group rounding).
NormalsPrefetch prefetch_of(const SgldSlot& slot, int64_t first, int64_t stop, GradDtype grad_dtype) {
  NormalsPrefetch out;
  out.count = std::min(stop, slot.base + slot.numel) - first;
  const int64_t at = first - slot.base;
  out.add(slot.param, at, sizeof(float));
  out.add(slot.grad, at, grad_dtype == GradDtype::kFloat32 ? 4 : 2);
  out.add(slot.prior_mean, at, sizeof(float));
  out.add(slot.accum, at, sizeof(float));
  out.add(slot.square_avg, at, sizeof(float));
  return out;
}

// Elements [begin, end) of the flattened call, in blocks of up to kBlock elements ending on
// kBlock boundaries: each block's normals are drawn once (for all the tensors it spans, so
// a list of small tensors costs what one flat tensor does), then each tensor's piece of the
// block is updated. `it`: the first slot that ends after `begin`.
void run_range(const SgldSlot* it, const SgldSlot* slots_end, int64_t begin, int64_t end,
               GradDtype grad_dtype, const SgldScalars& s, UpdateFn update) {
  const bool noise = s.noise_scale != 0.0f;
  float noise_buf[kBlock + 8];
  float grad_buf[kBlock];
  for (int64_t start = begin; start < end;) {
    const int64_t stop = std::min(end, (start / kBlock + 1) * kBlock);
    const int64_t first_group = start / 4;
    if (noise) {
      const NormalsPrefetch rows = prefetch_of(*it, 4 * first_group, stop, grad_dtype);
      fill_normals(s.seed, s.offset, static_cast<uint64_t>(first_group),
                   (stop - 1) / 4 - first_group + 1, noise_buf, &rows);
    }
    for (; it != slots_end && it->base < stop; ++it) {
      const int64_t lo = std::max(start, it->base);
      const int64_t hi = std::min(stop, it->base + it->numel);
      run_piece(*it, lo, hi, noise_buf + (lo - 4 * first_group), grad_dtype, s, update, grad_buf);
      if (it->base + it->numel > stop) break;  // the slot goes on into the next block
    }
    start = stop;
  }
}

}  // namespace

void run_sgld_cpu(const SgldSlot* slots, int64_t count, GradDtype grad_dtype,
                  const SgldScalars& scalars) {
  if (count == 0) return;
  RECORD_FUNCTION("lift_ext::sgld_cpu_kernel", std::vector<c10::IValue>());
  const SgldSlot& first = slots[0];
  const UpdateFn update = pick_update(scalars.prior_precision != 0.0f, first.prior_mean != nullptr,
                                     first.accum != nullptr, first.square_avg != nullptr,
                                     scalars.noise_scale != 0.0f);
  const SgldSlot* const slots_end = slots + count;
  const int64_t total_numel = slots[count - 1].base + slots[count - 1].numel;
  at::parallel_for(0, total_numel, kGrain, [&](int64_t begin, int64_t end) {
    // First slot whose range ends after `begin` (slots are sorted by base).
    const SgldSlot* it =
        std::upper_bound(slots, slots_end, begin,
                         [](int64_t v, const SgldSlot& sl) { return v < sl.base + sl.numel; });
    run_range(it, slots_end, begin, end, grad_dtype, scalars, update);
  });
}

namespace {

void run_call_cpu(const SgldCall& call) {
  run_sgld_cpu(call.slots.data(), static_cast<int64_t>(call.slots.size()), call.grad_dtype,
               call.scalars);
}

void sgld_step_list_cpu(at::TensorList params, at::TensorList grads, at::TensorList prior_means,
                        at::TensorList accums, at::TensorList square_avgs, double lr,
                        double temperature, double prior_precision, double alpha, double eps,
                        int64_t seed, int64_t offset,
                        const std::optional<at::Tensor>& rng_state) {
  if (!rng_state.has_value()) {
    run_call_cpu(prepare_sgld_call(params, grads, prior_means, accums, square_avgs, lr,
                                   temperature, prior_precision, alpha, eps, seed, offset));
    return;
  }
  check_rng_state(*rng_state, params.empty() ? rng_state->device() : params[0].device(),
                       seed, offset);
  int64_t* state = checked_cpu_rng_state(*rng_state);
  run_call_cpu(prepare_sgld_call(params, grads, prior_means, accums, square_avgs, lr, temperature,
                                 prior_precision, alpha, eps, state[0], state[1]));
  state[1] += 1;
}

void philox_normal_cpu(const at::Tensor& out, int64_t seed, int64_t offset) {
  check_philox_normal_args(out, seed, offset);
  const int64_t numel = out.numel();
  float* data = out.data_ptr<float>();
  const int64_t full_groups = numel / 4;  // groups whose four elements all lie in `out`
  at::parallel_for(0, (numel + 3) / 4, kGrain / 4, [&](int64_t g0, int64_t g1) {
    // whole groups straight into `out`; a last, partial group through a buffer
    const int64_t direct_end = std::min(g1, full_groups);
    if (g0 < direct_end) {
      fill_normals(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                   static_cast<uint64_t>(g0), direct_end - g0, data + 4 * g0);
    }
    if (g1 > full_groups) {
      float last[4];
      fill_normals(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                   static_cast<uint64_t>(full_groups), 1, last);
      std::copy(last, last + (numel - 4 * full_groups), data + 4 * full_groups);
    }
  });
}

void fill_normals_on_cpu(const at::Tensor& out, c10::string_view isa, int64_t seed,
                         int64_t offset, int64_t first_group) {
  int found = -1;
  for (int i = 0; i < kNumNormalsIsas; ++i) {
    if (isa == normals_isa_name(static_cast<NormalsIsa>(i))) found = i;
  }
  TORCH_CHECK_VALUE(found >= 0, "isa must be \"generic\", \"avx2\" or \"avx512\", got \"", isa,
                    "\"");
  const auto path = static_cast<NormalsIsa>(found);
  TORCH_CHECK_VALUE(normals_isa_supported(path), "this machine cannot run the ", isa,
                    " path (it runs: see lift_ext._C.cpu_isas())");
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.is_contiguous() && out.numel() % 4 == 0,
              "out must be a contiguous float32 CPU tensor whose numel is a multiple of 4, got ",
              out.scalar_type(), " ", out.sizes());
  fill_normals_on(path, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                  static_cast<uint64_t>(first_group), out.numel() / 4, out.data_ptr<float>());
}

at::Tensor philox_words_cpu(const at::Tensor& counters, const at::Tensor& keys) {
  at::Tensor words = check_philox_words_args(counters, keys);
  const int64_t* c = counters.data_ptr<int64_t>();
  const int64_t* k = keys.data_ptr<int64_t>();
  int64_t* w = words.data_ptr<int64_t>();
  for (int64_t i = 0; i < counters.size(0); ++i) {
    const Philox4 r = philox4x32_10(
        static_cast<uint32_t>(c[4 * i]), static_cast<uint32_t>(c[4 * i + 1]),
        static_cast<uint32_t>(c[4 * i + 2]), static_cast<uint32_t>(c[4 * i + 3]),
        static_cast<uint32_t>(k[2 * i]), static_cast<uint32_t>(k[2 * i + 1]));
    for (int j = 0; j < 4; ++j) w[4 * i + j] = static_cast<int64_t>(r.v[j]);
  }
  return words;
}

}  // namespace

TORCH_LIBRARY_IMPL(lift_ext, CPU, m) {
  m.impl("philox4x32_10", &philox_words_cpu);
  m.impl("sgld_step_list_", &sgld_step_list_cpu);
  m.impl("philox_normal_", &philox_normal_cpu);
  m.impl("fill_normals_on_", &fill_normals_on_cpu);
}

}  // namespace lift_ext
