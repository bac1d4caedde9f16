// torch's rules for a tensor that an op writes in place, for the autograd kernels of the list
// ops (csrc/autograd.cpp) and the TensorTable steps (csrc/table.cpp), which write tensors the
// schema cannot name.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>

namespace lift_ext {

// Refuses, before anything is written, a tensor `name` that autograd would lose track of: under
// grad mode one that requires grad (a leaf or a view of one: torch's usual message; any other:
// the op is not differentiable), and an inference tensor outside inference mode.
inline void check_writable(const at::Tensor& t, const char* name) {
  if (!t.defined()) return;
  TORCH_CHECK(!t.is_inference(), name, " is an inference tensor: it can be updated in place only "
              "inside torch.inference_mode()");
  if (t.requires_grad() && at::GradMode::is_enabled()) {
    TORCH_CHECK(!t.is_leaf(), "a leaf Variable that requires grad is being used in an in-place "
                "operation.");
    TORCH_CHECK(!(t.is_view() && t._base().is_leaf()), "a view of a leaf Variable that requires "
                "grad is being used in an in-place operation.");
    TORCH_CHECK(false, name, " requires grad, and lift_ext's in-place updates are not "
                "differentiable: run them under torch.no_grad() (or on detached tensors)");
  }
}

// Marks `t` as modified in place: its version counter (shared with its views) is bumped, so a
// backward that saved it raises instead of using the new values.
inline void bump_version(const at::Tensor& t) {
  if (t.defined()) t.unsafeGetTensorImpl()->bump_version();
}

}  // namespace lift_ext
