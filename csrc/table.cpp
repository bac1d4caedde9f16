// TensorTable (lift_ext/table.h) and the op that steps it, sgld_step_table_ (schema in
// registration.cpp). The op takes no tensor but the table (and, in its graph-safe form,
// rng_state), so it is registered once for every backend (CompositeExplicitAutograd) and picks
// the kernel from the table's device.
#include "lift_ext/table.h"

#include <optional>
#include <utility>

#include <c10/util/Exception.h>
#include <torch/library.h>

#include "lift_ext/autograd_rules.h"
#include "lift_ext/sgld_run.h"

namespace lift_ext {
namespace {

c10::Device device_of(const std::vector<at::Tensor>& params) {
  TORCH_CHECK(!params.empty(), "a TensorTable needs at least one param");
  TORCH_CHECK(params[0].defined(), "params[0] is undefined");
  return params[0].device();
}

}  // namespace

TensorTable::TensorTable(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
                         std::vector<at::Tensor> prior_means, std::vector<at::Tensor> accums,
                         std::vector<at::Tensor> square_avgs)
    : device_(device_of(params)), device_slots_(device_) {
  call_ = prepare_sgld_tensors(params, grads, prior_means, accums, square_avgs);
#if !defined(LIFT_EXT_WITH_CUDA)
  TORCH_CHECK(!device_.is_cuda(),
              "lift_ext was built without its CUDA kernels: a TensorTable of CUDA tensors needs "
              "them (rebuild with LIFT_EXT_CUDA=1)");
#endif
  TORCH_CHECK(device_.is_cpu() || device_.is_cuda(),
              "a TensorTable holds CPU or CUDA tensors, got ", device_);
  tensors_ = {std::move(params), std::move(grads), std::move(prior_means), std::move(accums),
              std::move(square_avgs)};
  for (const auto& list : tensors_) {
    for (const at::Tensor& t : list) {
      const c10::TensorImpl* impl = t.unsafeGetTensorImpl();
      storages_.push_back(t.storage());
      snapshots_.push_back(Snapshot{impl, storages_.back().unsafeGetStorageImpl(),
                                    storages_.back().data(), impl->storage_offset(), impl->numel(),
                                    impl->dtype()});
    }
  }
  for (const Role role : {kParams, kAccums, kSquareAvgs}) {
    for (const at::Tensor& t : tensors_[role]) {
      written_.push_back(t.unsafeGetTensorImpl());
      check_written_ = check_written_ || t.requires_grad() || t.is_inference();
    }
  }
  const auto& ps = tensors_[kParams];
  const auto& gs = tensors_[kGrads];
  grad_is_param_grad_.resize(ps.size());
  for (size_t i = 0; i < ps.size(); ++i) {
    grad_is_param_grad_[i] =
        ps[i].unsafeGetTensorImpl()->grad().unsafeGetTensorImpl() == gs[i].unsafeGetTensorImpl();
  }
#if defined(LIFT_EXT_WITH_CUDA)
  if (device_.is_cuda() && !call_.slots.empty()) {
    upload_slots_cuda(call_.slots.data(), static_cast<int64_t>(call_.slots.size()), device_slots_);
  }
#endif
}

void TensorTable::check_writable_tensors() const {
  if (!check_written_) return;
  static const char* const names[] = {"params", "accum", "square_avg"};
  size_t k = 0;
  for (const Role role : {kParams, kAccums, kSquareAvgs}) {
    for (const at::Tensor& t : tensors_[role]) check_writable(t, names[k]);
    ++k;
  }
}

void TensorTable::bump_versions() const {
  for (c10::TensorImpl* t : written_) t->bump_version();
}

void TensorTable::step(const SgldScalars& scalars) const {
  check_writable_tensors();
  if (device_.is_cpu()) {
    if (!call_.slots.empty()) {
      run_sgld_cpu(call_.slots.data(), static_cast<int64_t>(call_.slots.size()),
                   call_.grad_dtype, scalars);
    }
  } else {
#if defined(LIFT_EXT_WITH_CUDA)
    if (!call_.slots.empty()) run_sgld_table_cuda(device_slots_, call_.grad_dtype, scalars, nullptr);
#endif
  }
  bump_versions();
}

void TensorTable::step_graphsafe(const at::Tensor& rng_state, SgldScalars scalars) const {
  check_writable(rng_state, "rng_state");
  if (device_.is_cpu()) {
    int64_t* state = checked_cpu_rng_state(rng_state);
    scalars.seed = static_cast<uint64_t>(state[0]);
    scalars.offset = static_cast<uint64_t>(state[1]);
    step(scalars);
    state[1] += 1;
    bump_version(rng_state);
    return;
  }
#if defined(LIFT_EXT_WITH_CUDA)
  check_writable_tensors();
  // Also without slots (a table of empty tensors): the offset still advances.
  run_sgld_table_cuda(device_slots_, call_.grad_dtype, scalars, rng_state.data_ptr<int64_t>());
  bump_versions();
  bump_version(rng_state);
#endif
}

bool TensorTable::is_current(const std::vector<const c10::TensorImpl*>* group) const {
  for (const Snapshot& s : snapshots_) {
    const c10::TensorImpl* t = s.tensor;
    const c10::StorageImpl* storage = t->unsafe_storage().unsafeGetStorageImpl();
    if (storage != s.storage || storage->data() != s.storage_data ||
        t->storage_offset() != s.storage_offset || t->numel() != s.numel || t->dtype() != s.dtype ||
        !t->is_contiguous()) {
      return false;
    }
  }
  const auto& ps = tensors_[kParams];
  const auto& gs = tensors_[kGrads];
  for (size_t i = 0; i < ps.size(); ++i) {
    if (grad_is_param_grad_[i] &&
        ps[i].unsafeGetTensorImpl()->grad().unsafeGetTensorImpl() != gs[i].unsafeGetTensorImpl()) {
      return false;
    }
  }
  if (group == nullptr) return true;
  size_t j = 0;
  for (const c10::TensorImpl* p : *group) {
    const at::Tensor& grad = p->grad();
    if (!grad.defined()) continue;
    if (j == ps.size() || p != ps[j].unsafeGetTensorImpl() ||
        grad.unsafeGetTensorImpl() != gs[j].unsafeGetTensorImpl()) {
      return false;
    }
    ++j;
  }
  return j == ps.size();
}

namespace {

void sgld_step_table(const c10::intrusive_ptr<TensorTable>& table, double lr, double temperature,
                     double prior_precision, double alpha, double eps, int64_t seed,
                     int64_t offset, const std::optional<at::Tensor>& rng_state) {
  if (!rng_state.has_value()) {
    table->step(prepare_sgld_scalars(lr, temperature, prior_precision, alpha, eps, seed, offset,
                                     table->preconditioned()));
    return;
  }
  check_rng_state(*rng_state, table->device(), seed, offset);
  // seed / offset live in rng_state: step_graphsafe checks them (on the CPU) or the kernel
  // reads them (CUDA); the scalar checks see placeholders (0, 0).
  table->step_graphsafe(*rng_state, prepare_sgld_scalars(lr, temperature, prior_precision, alpha,
                                                         eps, 0, 0, table->preconditioned()));
}

}  // namespace

TORCH_LIBRARY_IMPL(lift_ext, CompositeExplicitAutograd, m) {
  m.impl("sgld_step_table_", &sgld_step_table);
}

}  // namespace lift_ext
