// The Autograd kernel of every in-place list/tensor op (registration.cpp marks what each
// writes: Tensor(a!), Tensor(a!)[], Tensor(a!)?): one boxed function that reads the written
// arguments from the op's schema, so that autograd sees every mutation as it sees torch's own
// in-place ops.
//   * Before the write, under grad mode, a written tensor that requires grad is refused: a
//     leaf (or a view of one) with torch's usual message, any other with a message naming the
//     argument and saying the op is not differentiable (call it under torch.no_grad(), as
//     optimizers do). An inference tensor outside inference mode is refused as torch refuses it.
//   * After the write, every written tensor's version counter is bumped, so backward raises
//     torch's "modified by an inplace operation" error when a tensor saved for it was stepped.
// The kernel runs the op below autograd (AutoDispatchBelowADInplaceOrView). Calls arrive boxed
// from torch.ops, so a boxed kernel adds no conversion. Inside torch.inference_mode() the
// autograd keys are skipped, as for torch's ops. (The TensorTable op applies these rules to
// the tensors inside its table itself: csrc/table.cpp.)
#include <vector>

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

#include "lift_ext/autograd_rules.h"

namespace lift_ext {
namespace {

// Calls `visit(tensor, argument name)` for every defined tensor of a written argument:
// a Tensor, each element of a Tensor[], a present Tensor?.
template <typename Visit>
void for_each_written(const c10::FunctionSchema& schema, const std::vector<c10::IValue>& args,
                      Visit&& visit) {
  for (size_t i = 0; i < args.size(); ++i) {
    const c10::AliasInfo* alias = schema.arguments()[i].alias_info();
    if (alias == nullptr || !alias->isWrite()) continue;
    const char* name = schema.arguments()[i].name().c_str();
    const c10::IValue& value = args[i];
    if (value.isTensor()) {
      visit(value.toTensor(), name);
    } else if (value.isTensorList()) {
      for (const at::Tensor& t : value.toTensorList()) visit(t, name);
    }  // None: an absent optional tensor writes nothing
  }
}

void inplace_autograd(const c10::OperatorHandle& op, c10::Stack* stack) {
  const c10::FunctionSchema& schema = op.schema();
  const size_t num_args = schema.arguments().size();
  // The arguments stay referenced here: the call below pops them off the stack.
  const std::vector<c10::IValue> args(stack->end() - num_args, stack->end());
  for_each_written(schema, args, [](const at::Tensor& t, const char* name) {
    check_writable(t, name);
  });
  {
    const at::AutoDispatchBelowADInplaceOrView below;
    op.callBoxed(stack);
  }
  for_each_written(schema, args, [](const at::Tensor& t, const char*) { bump_version(t); });
}

}  // namespace

TORCH_LIBRARY_IMPL(lift_ext, Autograd, m) {
  for (const char* name : {"sgld_step_list_", "philox_normal_", "fill_normals_on_", "phi_step_",
                           "gmm_mstep_", "gmm_prior_grad_"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&inplace_autograd>());
  }
}

}  // namespace lift_ext
