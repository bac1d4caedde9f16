// Every op schema of lift_ext, and its TorchBind class TensorTable, declared once. Backends
// register their kernels with TORCH_LIBRARY_IMPL in csrc/cpu/ and csrc/cuda/ (the TensorTable
// op, which takes no tensor to dispatch on but rng_state, once in csrc/table.cpp); fake (meta)
// kernels live in lift_ext/ops.py. In-place ops end in `_` and take the tensors they write
// first; their autograd kernels (csrc/autograd.cpp) bump the written tensors' versions.
#include <optional>
#include <vector>

#include <torch/library.h>

#include "lift_ext/table.h"

TORCH_LIBRARY(lift_ext, m) {
  // The tensors of an SGLD step, checked once, their slots built once (lift_ext/table.h):
  // TensorTable(params, grads, prior_means, accums, square_avgs), the lists as the list op
  // takes them (empty = absent); len(table) is its number of params.
  m.class_<lift_ext::TensorTable>("TensorTable")
      .def(torch::init<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
                       std::vector<at::Tensor>, std::vector<at::Tensor>>())
      .def("__len__", &lift_ext::TensorTable::size)
      // is_current(group=None) -> bool: TensorTable::is_current; group, when given, is the
      // list of tensors of a parameter group (lift_ext/table.py states the contract).
      .def("is_current",
           [](const c10::intrusive_ptr<lift_ext::TensorTable>& self,
              const std::optional<std::vector<at::Tensor>>& group) {
             if (!group.has_value()) return self->is_current(nullptr);
             std::vector<const c10::TensorImpl*> impls;  // identities only
             impls.reserve(group->size());
             for (const at::Tensor& t : *group) impls.push_back(t.unsafeGetTensorImpl());
             return self->is_current(&impls);
           })
      // device() -> str: the device of the table's tensors, as str(torch.device) spells it.
      .def("device", [](const c10::intrusive_ptr<lift_ext::TensorTable>& self) {
        return self->device().str();
      });
  // SGLD step on a list of tensors in one pass (docs/design.md sections 2 and 6); element
  // indices (and so the noise) run over the concatenation of the list, so one flat tensor is
  // a list of one. prior_means, accums and square_avgs are optional: an empty list means "absent";
  // square_avgs present switches on RMSprop preconditioning.
  // rng_state, when given: an int64 tensor [seed, offset] on the params' device from which the
  // op reads seed and offset (then left at 0) and which it advances in place (offset += 1, on
  // the device, also with temperature 0), so that a CUDA-graph capture of one call draws fresh
  // noise on every replay; the noise is that of the call with that (seed, offset).
  // The graph-safe form is an optional argument of the one op, not an overload: one kernel per
  // backend, one autograd kernel and one fake serve both forms, and torch.library.opcheck and
  // auto-functionalization handle a mutable optional tensor like any other written argument.
  m.def(
      "sgld_step_list_(Tensor(a!)[] params, Tensor[] grads, Tensor[] prior_means, "
      "Tensor(b!)[] accums, Tensor(c!)[] square_avgs, float lr, float temperature, "
      "float prior_precision, float alpha, float eps, int seed=0, int offset=0, "
      "Tensor(d!)? rng_state=None) -> ()");
  // The list step over the tensors of a TensorTable: bitwise the same as sgld_step_list_ on its
  // lists (rng_state as there, on the table's device), with O(1) host work besides the version
  // bumps of the tensors it writes (the checks ran when the table was built). The tensors it
  // writes are inside the table, so the schema cannot mark them (a class argument takes no
  // alias annotation): torch.compile and functionalization must use sgld_step_list_.
  m.def(
      "sgld_step_table_(__torch__.torch.classes.lift_ext.TensorTable table, float lr, "
      "float temperature, float prior_precision, float alpha, float eps, int seed=0, "
      "int offset=0, Tensor(a!)? rng_state=None) -> ()");
  // Fills `out` (float32, contiguous) with the noise sgld_step_list_ adds to a flat vector.
  m.def("philox_normal_(Tensor(a!) out, int seed, int offset) -> ()");
  // Fills `out` (float32, contiguous, CPU, numel a multiple of 4) with the normals of element
  // groups first_group .. first_group + numel / 4 - 1 for (seed, offset), drawn on the CPU
  // path `isa` ("generic", "avx2" or "avx512", one this machine runs); seed, offset and
  // first_group are the bits of unsigned 64-bit words. Verification: every path gives the
  // same bits (python_tests/test_cpu_normals.py).
  m.def("fill_normals_on_(Tensor(a!) out, str isa, int seed, int offset, int first_group) -> ()");
  // SGLD-Gibbs update of the shared prior phi from the running task sum S (docs/design.md
  // section 3): a Langevin step (gibbs=False) or an exact conditional draw (gibbs=True).
  m.def(
      "phi_step_(Tensor(a!) phi, Tensor task_sum, Tensor? prior_mean, float lr, "
      "float temperature, float sigma, float beta, int num_tasks, bool gibbs, int seed, "
      "int offset) -> ()");
  // Raw Philox4x32-10 words: counters int64 [N, 4] and keys int64 [N, 2] hold uint32 words;
  // returns int64 [N, 4]. The generator of every kernel, exposed for verification.
  m.def("philox4x32_10(Tensor counters, Tensor keys) -> Tensor");
  // Gaussian-mixture E-step (docs/design.md section 4): x [B, D] float32, means / m2 [K, D]
  // float32, counts [K] float64, reg the variance floor -> (loglik [B, K], resp [B, K]) float64.
  m.def("gmm_estep(Tensor x, Tensor means, Tensor m2, Tensor counts, float reg) -> (Tensor, Tensor)");
  // Mini-batch online-EM M-step in place: Chan's merge of the batch statistics weighted by
  // resp [B, K] (float64, from the E-step at batch-start parameters) into means, m2, counts.
  m.def(
      "gmm_mstep_(Tensor(a!) means, Tensor(b!) m2, Tensor(c!) counts, Tensor x, Tensor resp) "
      "-> ()");
  // Meta-test mixture-prior gradient (docs/design.md section 5), accumulated into grad [D]:
  //   grad += scale * sum_k resp_k (theta - mu_k) / (M2_k / n_k + reg),   resp [K] float64.
  m.def(
      "gmm_prior_grad_(Tensor(a!) grad, Tensor theta, Tensor means, Tensor m2, Tensor counts, "
      "Tensor resp, float reg, float scale) -> ()");
}
