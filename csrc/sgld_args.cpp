#include "lift_ext/sgld_args.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <ostream>
#include <string>

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include "lift_ext/float32_range.h"
#include "lift_ext/overlap.h"

namespace lift_ext {
namespace {

// "grads[3]" (or "grads" for a single tensor), formatted only when a check fails: the
// messages of TORCH_CHECK are built lazily, so a passing call allocates no strings.
struct ItemName {
  const char* name;
  size_t index;
  bool is_list;
};

std::ostream& operator<<(std::ostream& os, const ItemName& n) {
  os << n.name;
  if (n.is_list) os << "[" << n.index << "]";
  return os;
}

// Why params must be float32 when they are not: the fix a mixed-precision user needs.
constexpr const char* kMasterWeights =
    " (the step keeps float32 master weights: keep the parameters float32, e.g. model.float(), and "
    "run the forward in bfloat16 / float16 under torch.autocast; such gradients are accepted)";

ItemName item_name(const char* name, size_t index, bool is_list) {
  return ItemName{name, index, is_list};
}

void check_companion(const at::Tensor& t, const at::Tensor& param, const ItemName& name,
                     const ItemName& param_name, bool allow_low_precision) {
  TORCH_CHECK(t.device() == param.device(), name, " must be on the same device as ", param_name,
              " (", param.device(), "), got ", t.device());
  if (allow_low_precision) {
    const auto dt = t.scalar_type();
    TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, name,
                " must be float32, bfloat16 or float16, got ", dt);
  } else {
    TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  }
  TORCH_CHECK(t.sizes() == param.sizes(), name, " must have the shape of ", param_name, " ",
              param.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// The overlap check of a call (overlap.h) over the bytes of every array of every slot: the
// arrays the step writes (params, accum, square_avg) against everything else.
void check_slots_disjoint(const SgldCall& call, const std::vector<uint32_t>& slot_index,
                          bool is_list) {
  if (call.slots.empty()) return;
  const size_t n = call.slots.size();
  const SgldSlot& first = call.slots.front();
  const MemoryRole roles[] = {{"params", true, n},
                              {"grads", false, n},
                              {"prior_mean", false, first.prior_mean ? n : 0},
                              {"accum", true, first.accum ? n : 0},
                              {"square_avg", true, first.square_avg ? n : 0}};
  std::vector<MemoryRange> ranges;
  ranges.reserve(5 * n);
  auto add = [&](auto pointer_of, uintptr_t element_bytes) {
    for (const SgldSlot& slot : call.slots) {
      const auto begin = reinterpret_cast<uintptr_t>(pointer_of(slot));
      const auto bytes = static_cast<uintptr_t>(slot.numel) * element_bytes;
      ranges.push_back(MemoryRange{begin, begin + bytes});
    }
  };
  using Slot = const SgldSlot&;
  add([](Slot s) -> const void* { return s.param; }, 4);
  add([](Slot s) -> const void* { return s.grad; }, call.grad_dtype == GradDtype::kFloat32 ? 4 : 2);
  if (first.prior_mean) add([](Slot s) -> const void* { return s.prior_mean; }, 4);
  if (first.accum) add([](Slot s) -> const void* { return s.accum; }, 4);
  if (first.square_avg) add([](Slot s) -> const void* { return s.square_avg; }, 4);
  check_disjoint(ranges, roles, slot_index, is_list);
}

}  // namespace

SgldScalars prepare_sgld_scalars(double lr, double temperature, double prior_precision,
                                 double alpha, double eps, int64_t seed, int64_t offset,
                                 bool preconditioned) {
  TORCH_CHECK(std::isfinite(lr) && lr >= 0.0, "lr must be a finite number >= 0, got ", lr);
  TORCH_CHECK(std::isfinite(temperature) && temperature >= 0.0,
              "temperature must be a finite number >= 0, got ", temperature);
  float32_scalar("temperature", temperature);
  TORCH_CHECK(std::isfinite(prior_precision) && prior_precision >= 0.0,
              "prior_precision must be a finite number >= 0, got ", prior_precision);
  TORCH_CHECK(seed >= 0, "seed must be >= 0, got ", seed);
  TORCH_CHECK(offset >= 0, "offset must be >= 0, got ", offset);
  if (preconditioned) {
    TORCH_CHECK(alpha >= 0.0 && alpha < 1.0, "alpha must be in [0, 1), got ", alpha);
    // eps below float32's smallest normal would round to 0 and G = 1 / (sqrt(v) + 0) = inf.
    TORCH_CHECK(std::isfinite(eps) && eps >= FLT_MIN, "eps must be a finite number >= ", FLT_MIN,
                " (float32's smallest normal), got ", eps);
  }
  const double noise_scale = std::sqrt(2.0 * lr * temperature);
  // pSGLD damping eps' = max(eps, lr * prior_precision) (docs/design.md section 2): keeps the
  // prior pull lr G lam <= 1 and the noise variance 2 lr T G <= 2 T / lam where G = 1/eps'
  // (a weight whose gradient is still 0).
  const double damping = preconditioned ? std::max(eps, lr * prior_precision) : eps;
  return SgldScalars{float32_scalar("lr", lr),
                     float32_scalar("prior_precision", prior_precision),
                     float32_scalar("temperature", noise_scale, " (as sqrt(2 lr temperature))"),
                     static_cast<float>(alpha),
                     preconditioned ? float32_scalar("eps", damping, " (as max(eps, lr prior_precision))")
                                    : static_cast<float>(damping),
                     static_cast<uint64_t>(seed),
                     static_cast<uint64_t>(offset)};
}

SgldCall prepare_sgld_tensors(at::TensorList params, at::TensorList grads,
                              at::TensorList prior_means, at::TensorList accums,
                              at::TensorList square_avgs) {
  const bool preconditioned = !square_avgs.empty();
  const size_t n = params.size();
  const bool is_list = n != 1;
  TORCH_CHECK(grads.size() == n, "grads must have one tensor per param (", n, "), got ",
              grads.size());
  TORCH_CHECK(prior_means.empty() || prior_means.size() == n,
              "prior_mean must be empty or have one tensor per param (", n, "), got ",
              prior_means.size());
  TORCH_CHECK(accums.empty() || accums.size() == n,
              "accum must be empty or have one tensor per param (", n, "), got ", accums.size());
  TORCH_CHECK(square_avgs.empty() || square_avgs.size() == n,
              "square_avg must be empty or have one tensor per param (", n, "), got ",
              square_avgs.size());

  SgldCall call;
  call.slots.reserve(n);
  // The list index of each slot, for the overlap messages; empty while slot k is tensor k.
  std::vector<uint32_t> slot_index;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    const ItemName p_name = item_name("params", i, is_list);
    TORCH_CHECK(p.defined(), p_name, " is undefined");
    TORCH_CHECK(p.scalar_type() == at::kFloat, p_name, " must be float32, got ", p.scalar_type(),
                kMasterWeights);
    TORCH_CHECK(p.is_contiguous(), p_name, " must be contiguous");
    TORCH_CHECK(p.device() == params[0].device(), "all params must be on one device: ", p_name,
                " is on ", p.device(), ", params[0] on ", params[0].device());
    check_companion(grads[i], p, item_name("grads", i, is_list), p_name, true);
    if (i > 0) {
      TORCH_CHECK(grads[i].scalar_type() == grads[0].scalar_type(),
                  "all grads must share one dtype: ", item_name("grads", i, is_list), " is ",
                  grads[i].scalar_type(), ", grads[0] is ", grads[0].scalar_type());
    }
    if (!prior_means.empty()) {
      check_companion(prior_means[i], p, item_name("prior_mean", i, is_list), p_name, false);
    }
    if (!accums.empty()) {
      check_companion(accums[i], p, item_name("accum", i, is_list), p_name, false);
    }
    if (preconditioned) {
      check_companion(square_avgs[i], p, item_name("square_avg", i, is_list), p_name, false);
    }
    if (p.numel() > 0) {
      const size_t k = call.slots.size();  // this tensor's slot; k < i after an empty tensor
      if (k != i) {
        for (size_t j = slot_index.size(); j < k; ++j) {
          slot_index.push_back(static_cast<uint32_t>(j));
        }
        slot_index.push_back(static_cast<uint32_t>(i));
      }
      call.slots.push_back(SgldSlot{
          p.data_ptr<float>(), grads[i].data_ptr(),
          prior_means.empty() ? nullptr : prior_means[i].data_ptr<float>(),
          accums.empty() ? nullptr : accums[i].data_ptr<float>(),
          preconditioned ? square_avgs[i].data_ptr<float>() : nullptr, p.numel(),
          call.total_numel});
    }
    call.total_numel += p.numel();
  }
  if (n > 0) {
    switch (grads[0].scalar_type()) {
      case at::kBFloat16: call.grad_dtype = GradDtype::kBFloat16; break;
      case at::kHalf: call.grad_dtype = GradDtype::kFloat16; break;
      default: call.grad_dtype = GradDtype::kFloat32; break;
    }
  }
  check_slots_disjoint(call, slot_index, is_list);
  return call;
}

SgldCall prepare_sgld_call(at::TensorList params, at::TensorList grads, at::TensorList prior_means,
                           at::TensorList accums, at::TensorList square_avgs, double lr,
                           double temperature, double prior_precision, double alpha, double eps,
                           int64_t seed, int64_t offset) {
  const SgldScalars scalars = prepare_sgld_scalars(lr, temperature, prior_precision, alpha, eps,
                                                   seed, offset, !square_avgs.empty());
  SgldCall call = prepare_sgld_tensors(params, grads, prior_means, accums, square_avgs);
  call.scalars = scalars;
  return call;
}

void check_rng_state(const at::Tensor& rng_state, const at::Device& device, int64_t seed,
                     int64_t offset) {
  TORCH_CHECK(seed == 0 && offset == 0, "seed and offset must be left at 0 when rng_state is "
              "given (rng_state holds them), got seed=", seed, ", offset=", offset);
  TORCH_CHECK(rng_state.scalar_type() == at::kLong, "rng_state must be int64 [seed, offset], got ",
              rng_state.scalar_type());
  TORCH_CHECK(rng_state.dim() == 1 && rng_state.size(0) == 2,
              "rng_state must have shape [2] ([seed, offset]), got ", rng_state.sizes());
  TORCH_CHECK(rng_state.is_contiguous(), "rng_state must be contiguous");
  TORCH_CHECK(rng_state.device() == device, "rng_state must be on the device of params (", device,
              "), got ", rng_state.device());
}

int64_t* checked_cpu_rng_state(const at::Tensor& rng_state) {
  int64_t* state = rng_state.data_ptr<int64_t>();
  TORCH_CHECK(state[0] >= 0, "rng_state seed must be >= 0, got ", state[0]);
  TORCH_CHECK(state[1] >= 0 && state[1] < std::numeric_limits<int64_t>::max(),
              "rng_state offset must be in [0, 2^63 - 2] (the step adds 1 to it), got ", state[1]);
  return state;
}

void check_philox_normal_args(const at::Tensor& out, int64_t seed, int64_t offset) {
  TORCH_CHECK(out.scalar_type() == at::kFloat, "out must be float32, got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "out must be contiguous");
  TORCH_CHECK(seed >= 0, "seed must be >= 0, got ", seed);
  TORCH_CHECK(offset >= 0, "offset must be >= 0, got ", offset);
}

at::Tensor check_philox_words_args(const at::Tensor& counters, const at::Tensor& keys) {
  TORCH_CHECK(counters.scalar_type() == at::kLong && keys.scalar_type() == at::kLong,
              "counters and keys must be int64, got ", counters.scalar_type(), " and ",
              keys.scalar_type());
  TORCH_CHECK(counters.dim() == 2 && counters.size(1) == 4, "counters must have shape [N, 4], got ",
              counters.sizes());
  TORCH_CHECK(keys.dim() == 2 && keys.size(1) == 2 && keys.size(0) == counters.size(0),
              "keys must have shape [N, 2] with N = counters.size(0), got ", keys.sizes());
  TORCH_CHECK(keys.device() == counters.device(), "keys must be on the device of counters");
  TORCH_CHECK(counters.is_contiguous() && keys.is_contiguous(),
              "counters and keys must be contiguous");
  return at::empty({counters.size(0), 4}, counters.options());
}

}  // namespace lift_ext
