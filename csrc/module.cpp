// The Python module `lift_ext._C`. Loading it runs the static TORCH_LIBRARY registrations
// (import torch before it). It also holds one function, `sgld_step_list_eager`: the same
// `lift_ext::sgld_step_list_` op reached through the dispatcher's typed C++ entry instead of
// `torch.ops`, which converts a Python list of tensors element by element into the boxed
// calling convention (~0.09 us per tensor: 0.12 ms for a 448-tensor step with prior means,
// more than the CUDA kernel). Plain tensors and Parameters only; for anything else (a list
// holding a Tensor subclass or a non-Tensor) it returns NotImplemented and the caller takes
// torch.ops, which also serves torch.compile and __torch_function__ modes.
#include <Python.h>

#include <vector>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

namespace {

// Appends the tensors of a Python list or tuple to `out`; false (nothing raised) when an
// element is not exactly a torch.Tensor or torch.nn.Parameter.
bool plain_tensors(PyObject* seq, std::vector<at::Tensor>& out) {
  if (!PyList_Check(seq) && !PyTuple_Check(seq)) return false;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** items = PySequence_Fast_ITEMS(seq);
  out.reserve(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!THPVariable_CheckExact(items[i])) return false;
    out.push_back(THPVariable_Unpack(items[i]));
  }
  return true;
}

using SgldListFn = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                        at::TensorList, double, double, double, double, double, int64_t, int64_t);

// sgld_step_list_eager(params, grads, prior_means, accums, square_avgs, lr, temperature,
//                      prior_precision, alpha, eps, seed, offset) -> None | NotImplemented
PyObject* sgld_step_list_eager(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* lists[5];
  double lr, temperature, prior_precision, alpha, eps;
  long long seed, offset;
  if (!PyArg_ParseTuple(args, "OOOOOdddddLL", &lists[0], &lists[1], &lists[2], &lists[3],
                        &lists[4], &lr, &temperature, &prior_precision, &alpha, &eps, &seed,
                        &offset)) {
    return nullptr;
  }
  std::vector<at::Tensor> tensors[5];
  for (int k = 0; k < 5; ++k) {
    if (!plain_tensors(lists[k], tensors[k])) Py_RETURN_NOTIMPLEMENTED;
  }
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lift_ext::sgld_step_list_", "")
                             .typed<SgldListFn>();
  op.call(tensors[0], tensors[1], tensors[2], tensors[3], tensors[4], lr, temperature,
          prior_precision, alpha, eps, seed, offset);
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"sgld_step_list_eager", sgld_step_list_eager, METH_VARARGS,
     "lift_ext::sgld_step_list_ through the typed dispatcher entry (plain tensors only; "
     "NotImplemented otherwise)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                          "lift_ext kernels (registered as torch.ops.lift_ext)",
                                          -1, methods};
  return PyModule_Create(&module_def);
}
