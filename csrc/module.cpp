// The Python module `lift_ext._C`. Loading it runs the static TORCH_LIBRARY registrations
// (import torch before it). It also holds the eager entries of the SGLD ops: each reaches its
// op through the dispatcher's typed C++ entry instead of `torch.ops`, which converts a Python
// list of tensors element by element into the boxed calling convention (~0.09 us per tensor:
// 0.12 ms for a 448-tensor step with prior means, more than the CUDA kernel), and each
// releases the GIL while the op runs, so other Python threads go on during a long CPU step.
//
//   sgld_step_list_eager             lift_ext::sgld_step_list_ on plain tensors / Parameters;
//                                    NotImplemented for anything else (a Tensor subclass, a
//                                    non-Tensor): the caller takes torch.ops, which also serves
//                                    torch.compile and __torch_function__ modes
//   tensor_table_new                 a TensorTable (lift_ext/table.h) from five lists
//   sgld_step_table_eager            lift_ext::sgld_step_table_: O(1) host work
//   sgld_step_table_graphsafe_eager  lift_ext::sgld_step_table_graphsafe_
//   tensor_table_is_current          TensorTable::is_current
// and the instruction-set paths of the CPU normals (lift_ext/cpu_normals.h):
//   cpu_isa                          the path the CPU kernels take on this machine
//   cpu_isas                         every path this machine can run
//   fill_normals_on                  the normals of any element groups on a given path, so
//                                    that tests compare the paths bitwise
#include <Python.h>

#include <string>
#include <vector>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/csrc/utils/pybind.h>

#include "lift_ext/cpu_normals.h"
#include "lift_ext/table.h"

namespace {

using lift_ext::TensorTable;
using TablePtr = c10::intrusive_ptr<TensorTable>;

// Appends the tensors of a Python list or tuple to `out`; false (nothing raised) when `seq` is
// not a list or tuple, or an element is not exactly a torch.Tensor or torch.nn.Parameter.
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

// The TensorTable inside a torch.ScriptObject (TypeError for anything else).
TablePtr unwrap_table(PyObject* handle) {
  const py::handle h(handle);
  if (!py::isinstance<torch::jit::Object>(h)) {
    throw torch::TypeError(std::string("expected a torch.classes.lift_ext.TensorTable, got ") +
                           Py_TYPE(handle)->tp_name);
  }
  return c10::IValue(h.cast<torch::jit::Object>()._ivalue()).toCustomClass<TensorTable>();
}

using SgldListFn = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                        at::TensorList, double, double, double, double, double, int64_t, int64_t);
using SgldTableFn = void(const TablePtr&, double, double, double, double, double, int64_t, int64_t);
using SgldTableGraphsafeFn = void(const TablePtr&, const at::Tensor&, double, double, double,
                                  double, double);

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
  {
    const pybind11::gil_scoped_release no_gil;
    op.call(tensors[0], tensors[1], tensors[2], tensors[3], tensors[4], lr, temperature,
              prior_precision, alpha, eps, seed, offset);
  }
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

// tensor_table_new(params, grads, prior_means, accums, square_avgs) -> torch.ScriptObject
PyObject* tensor_table_new(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  static const char* const names[5] = {"params", "grads", "prior_means", "accums", "square_avgs"};
  PyObject* lists[5];
  if (!PyArg_ParseTuple(args, "OOOOO", &lists[0], &lists[1], &lists[2], &lists[3], &lists[4])) {
    return nullptr;
  }
  std::vector<at::Tensor> tensors[5];
  for (int k = 0; k < 5; ++k) {
    if (!plain_tensors(lists[k], tensors[k])) {
      throw torch::TypeError(std::string(names[k]) +
                             " must be a list of torch.Tensor or torch.nn.Parameter (a "
                             "TensorTable holds plain tensors, no subclass)");
    }
  }
  auto table = c10::make_intrusive<TensorTable>(std::move(tensors[0]), std::move(tensors[1]),
                                                std::move(tensors[2]), std::move(tensors[3]),
                                                std::move(tensors[4]));
  return torch::jit::toPyObject(c10::IValue(std::move(table))).release().ptr();
  END_HANDLE_TH_ERRORS
}

// sgld_step_table_eager(table, lr, temperature, prior_precision, alpha, eps, seed, offset)
PyObject* sgld_step_table_eager(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* handle;
  double lr, temperature, prior_precision, alpha, eps;
  long long seed, offset;
  if (!PyArg_ParseTuple(args, "OdddddLL", &handle, &lr, &temperature, &prior_precision, &alpha,
                        &eps, &seed, &offset)) {
    return nullptr;
  }
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lift_ext::sgld_step_table_", "")
                             .typed<SgldTableFn>();
  const TablePtr table = unwrap_table(handle);
  {
    const pybind11::gil_scoped_release no_gil;
    op.call(table, lr, temperature, prior_precision, alpha, eps, seed, offset);
  }
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

// sgld_step_table_graphsafe_eager(table, rng_state, lr, temperature, prior_precision, alpha, eps)
PyObject* sgld_step_table_graphsafe_eager(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* handle;
  PyObject* state;
  double lr, temperature, prior_precision, alpha, eps;
  if (!PyArg_ParseTuple(args, "OOddddd", &handle, &state, &lr, &temperature, &prior_precision,
                        &alpha, &eps)) {
    return nullptr;
  }
  if (!THPVariable_Check(state)) {
    throw torch::TypeError(std::string("rng_state must be an int64 Tensor [seed, offset], got ") +
                           Py_TYPE(state)->tp_name);
  }
  const TablePtr table = unwrap_table(handle);
  const at::Tensor rng_state = THPVariable_Unpack(state);
  // The op dispatches on rng_state alone: one on another device (meta) would reach that
  // device's kernel and skip the step.
  TORCH_CHECK(rng_state.device() == table->device(), "rng_state must be on the device of the "
              "table (", table->device(), "), got ", rng_state.device());
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lift_ext::sgld_step_table_graphsafe_", "")
                             .typed<SgldTableGraphsafeFn>();
  {
    const pybind11::gil_scoped_release no_gil;
    op.call(table, rng_state, lr, temperature, prior_precision, alpha, eps);
  }
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

// tensor_table_is_current(table, group) -> bool; group: None or a list of tensors (a
// parameter group).
PyObject* tensor_table_is_current(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* handle;
  PyObject* group;
  if (!PyArg_ParseTuple(args, "OO", &handle, &group)) return nullptr;
  const TablePtr table = unwrap_table(handle);
  std::vector<const c10::TensorImpl*> group_tensors;  // no reference counting: just identities
  if (group != Py_None) {
    if (!PyList_Check(group) && !PyTuple_Check(group)) {
      throw torch::TypeError("group must be None or a list of Tensors");
    }
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(group);
    PyObject** items = PySequence_Fast_ITEMS(group);
    group_tensors.reserve(static_cast<size_t>(n));
    for (Py_ssize_t i = 0; i < n; ++i) {
      if (!THPVariable_Check(items[i])) {
        throw torch::TypeError("group must be None or a list of Tensors");
      }
      group_tensors.push_back(THPVariable_Unpack(items[i]).unsafeGetTensorImpl());
    }
  }
  if (table->is_current(group == Py_None ? nullptr : &group_tensors)) Py_RETURN_TRUE;
  Py_RETURN_FALSE;
  END_HANDLE_TH_ERRORS
}

// cpu_isa() -> str: "avx512", "avx2" or "generic", the path of the CPU normals.
PyObject* cpu_isa(PyObject* /*self*/, PyObject* /*args*/) {
  return PyUnicode_FromString(lift_ext::normals_isa_name(lift_ext::normals_isa()));
}

// cpu_isas() -> tuple of str: the paths this machine can run, slowest first.
PyObject* cpu_isas(PyObject* /*self*/, PyObject* /*args*/) {
  std::vector<const char*> names;
  for (int i = 0; i < lift_ext::kNumNormalsIsas; ++i) {
    const auto isa = static_cast<lift_ext::NormalsIsa>(i);
    if (lift_ext::normals_isa_supported(isa)) names.push_back(lift_ext::normals_isa_name(isa));
  }
  PyObject* tuple = PyTuple_New(static_cast<Py_ssize_t>(names.size()));
  if (tuple == nullptr) return nullptr;
  for (size_t i = 0; i < names.size(); ++i) {
    PyObject* name = PyUnicode_FromString(names[i]);
    if (name == nullptr) {
      Py_DECREF(tuple);
      return nullptr;
    }
    PyTuple_SET_ITEM(tuple, static_cast<Py_ssize_t>(i), name);
  }
  return tuple;
}

// The value of a Python int in [0, 2^64) (TypeError / OverflowError otherwise; -1 and a set
// error are returned together).
unsigned long long uint64_arg(PyObject* value) {
  if (!PyLong_Check(value)) {
    PyErr_Format(PyExc_TypeError, "expected an int, got %s", Py_TYPE(value)->tp_name);
    return static_cast<unsigned long long>(-1);
  }
  return PyLong_AsUnsignedLongLong(value);
}

// fill_normals_on(isa, out, seed, offset, first_group): out (float32, contiguous, CPU, numel
// a multiple of 4) = the normals of element groups first_group .. first_group + numel / 4 - 1
// for (seed, offset), drawn on path `isa` (one of cpu_isas()); seed, offset and first_group
// are ints in [0, 2^64).
PyObject* fill_normals_on(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  const char* name;
  PyObject* out_obj;
  PyObject* words[3];
  if (!PyArg_ParseTuple(args, "sOOOO", &name, &out_obj, &words[0], &words[1], &words[2])) {
    return nullptr;
  }
  uint64_t values[3];
  for (int k = 0; k < 3; ++k) {
    values[k] = uint64_arg(words[k]);
    if (PyErr_Occurred()) return nullptr;
  }
  int found = -1;
  for (int i = 0; i < lift_ext::kNumNormalsIsas; ++i) {
    if (std::string(name) == lift_ext::normals_isa_name(static_cast<lift_ext::NormalsIsa>(i))) found = i;
  }
  TORCH_CHECK_VALUE(found >= 0, "isa must be \"generic\", \"avx2\" or \"avx512\", got \"", name, "\"");
  const auto isa = static_cast<lift_ext::NormalsIsa>(found);
  TORCH_CHECK_VALUE(lift_ext::normals_isa_supported(isa), "this machine cannot run the ", name,
                    " path (it runs: see cpu_isas())");
  TORCH_CHECK_TYPE(THPVariable_Check(out_obj), "out must be a Tensor, got ", Py_TYPE(out_obj)->tp_name);
  const at::Tensor out = THPVariable_Unpack(out_obj);
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == at::kFloat && out.is_contiguous() &&
                  out.numel() % 4 == 0,
              "out must be a contiguous float32 CPU tensor whose numel is a multiple of 4");
  lift_ext::fill_normals_on(isa, values[0], values[1], values[2], out.numel() / 4,
                            out.data_ptr<float>());
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"sgld_step_list_eager", sgld_step_list_eager, METH_VARARGS,
     "lift_ext::sgld_step_list_ through the typed dispatcher entry, without the GIL (plain "
     "tensors only; NotImplemented otherwise)."},
    {"tensor_table_new", tensor_table_new, METH_VARARGS,
     "A torch.classes.lift_ext.TensorTable from (params, grads, prior_means, accums, "
     "square_avgs)."},
    {"sgld_step_table_eager", sgld_step_table_eager, METH_VARARGS,
     "lift_ext::sgld_step_table_ through the typed dispatcher entry, without the GIL."},
    {"sgld_step_table_graphsafe_eager", sgld_step_table_graphsafe_eager, METH_VARARGS,
     "lift_ext::sgld_step_table_graphsafe_ through the typed dispatcher entry, without the GIL."},
    {"tensor_table_is_current", tensor_table_is_current, METH_VARARGS,
     "TensorTable::is_current(group)."},
    {"cpu_isa", cpu_isa, METH_NOARGS,
     "The instruction-set path of the CPU normals here: \"avx512\", \"avx2\" or \"generic\"."},
    {"cpu_isas", cpu_isas, METH_NOARGS,
     "Every instruction-set path of the CPU normals this machine can run, slowest first."},
    {"fill_normals_on", fill_normals_on, METH_VARARGS,
     "fill_normals_on(isa, out, seed, offset, first_group): the normals of element groups "
     "first_group .. first_group + out.numel() / 4 - 1 into out, drawn on path isa "
     "(verification: every path gives the same bits)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                          "lift_ext kernels (registered as torch.ops.lift_ext)",
                                          -1, methods};
  return PyModule_Create(&module_def);
}
