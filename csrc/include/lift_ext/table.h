// TensorTable: the tensors of an SGLD step checked once and their kernel slots built once (on
// the device for CUDA tensors), so that a step costs the same few microseconds of host time
// for one tensor or ten thousand. Registered as the TorchBind class
// torch.classes.lift_ext.TensorTable; the op sgld_step_table_ steps it (csrc/registration.cpp),
// and lift_ext.TensorTable (lift_ext/table.py) wraps it.
//
// Memory safety without per-call work: the table keeps a reference to every tensor and to the
// storage each had at build, so replacing a tensor's data (`p.data = ...`, `.to()`, `set_`)
// or a gradient (`p.grad = None`) never frees memory the table writes; the table keeps
// stepping what it was built from (torch.utils.swap_tensors refuses a tensor it holds).
// Noticing such a replacement takes per-tensor work (is_current, ~3 ns per tensor in cache,
// 10-30 ns out of it), which the step itself does not do. Reallocating a held storage in
// place (`resize_` beyond its size, `untyped_storage().resize_()`, `share_memory_()`) does
// free that memory: is_current notices it, a step does not, so a table must not be stepped
// after it. A CUDA graph that captured a step reads the table's device slots: the table must
// outlive the graph's replays.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Storage.h>
#include <torch/custom_class.h>

#include "lift_ext/sgld.h"
#include "lift_ext/sgld_args.h"
#include "lift_ext/sgld_run.h"

namespace lift_ext {

class TensorTable : public torch::CustomClassHolder {
 public:
  // The argument lists of a step, in the order of the list op's arguments.
  enum Role : int { kParams = 0, kGrads, kPriorMeans, kAccums, kSquareAvgs, kNumRoles };

  // Checks the lists as the list op does (prepare_sgld_tensors: dtypes, devices, shapes,
  // layout, no overlap) and builds the slots; at least one param.
  TensorTable(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
              std::vector<at::Tensor> prior_means, std::vector<at::Tensor> accums,
              std::vector<at::Tensor> square_avgs);

  int64_t size() const { return static_cast<int64_t>(tensors_[kParams].size()); }
  bool preconditioned() const { return !tensors_[kSquareAvgs].empty(); }
  const c10::Device& device() const { return device_; }

  // One step with the seed and offset in `scalars` (from prepare_sgld_scalars): O(1) host
  // work besides one version bump per written tensor (autograd_rules.h), then the kernel
  // (CPU) or one launch (CUDA).
  void step(const SgldScalars& scalars) const;

  // One step with (seed, offset) read from int64 rng_state [2] on the table's device (its form
  // checked by check_rng_state), then offset += 1 (on the device for CUDA: capturable in a
  // CUDA graph). `scalars`' seed and offset are ignored.
  void step_graphsafe(const at::Tensor& rng_state, SgldScalars scalars) const;

  // True when every tensor of the table is still on the memory, dtype, size and layout it had
  // at build (no replaced data, no reallocated storage) and every grad that was its param's
  // .grad at build still is. With `group` (a parameter group): also its entries that have a
  // .grad are exactly the table's params, in order, with those grads. O(number of tensors),
  // no allocation. (The tensors themselves cannot be swapped: torch.utils.swap_tensors
  // refuses a tensor something else, here the table, holds.)
  bool is_current(const std::vector<const c10::TensorImpl*>* group) const;

 private:
  // Where one held tensor's elements were at build.
  struct Snapshot {
    const c10::TensorImpl* tensor;
    const c10::StorageImpl* storage;
    const void* storage_data;
    int64_t storage_offset;
    int64_t numel;
    caffe2::TypeMeta dtype;
  };

  std::array<std::vector<at::Tensor>, kNumRoles> tensors_;
  std::vector<c10::Storage> storages_;  // the storage of every held tensor at build
  std::vector<Snapshot> snapshots_;
  std::vector<uint8_t> grad_is_param_grad_;  // grads[i] was params[i].grad at build
  // What autograd must see of a step (autograd_rules.h): the tensors it writes (params, accums,
  // square_avgs), whose versions each step bumps, and whether one of them required grad or was
  // an inference tensor at build (then each step checks them all first).
  std::vector<c10::TensorImpl*> written_;
  bool check_written_ = false;
  // The checks of autograd_rules.h on the written tensors (when check_written_), before a step.
  void check_writable_tensors() const;
  // The version bumps of autograd_rules.h on the written tensors, after a step.
  void bump_versions() const;
  SgldCall call_;                            // slots, grad dtype, element count (no scalars)
  c10::Device device_;
  DeviceSlots device_slots_;                 // CUDA: the slots in device memory
};

}  // namespace lift_ext
