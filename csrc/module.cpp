// The Python module `lift_ext._C`. Loading it runs the static TORCH_LIBRARY registrations of
// every other source file (import torch before it): the ops are reached through torch.ops.lift_ext
// and the TensorTable class through torch.classes.lift_ext. The module itself uses only
// CPython's limited API and nothing of torch's Python bindings, and names the instruction-set
// paths of the CPU normals (lift_ext/cpu_normals.h):
//   cpu_isa    the path the CPU kernels take on this machine
//   cpu_isas   every path this machine can run (the op fill_normals_on_ draws on any of them)
#include <Python.h>

#include "lift_ext/cpu_normals.h"

namespace {

// cpu_isa() -> str: "avx512", "avx2" or "generic", the path of the CPU normals.
PyObject* cpu_isa(PyObject* /*self*/, PyObject* /*args*/) {
  return PyUnicode_FromString(lift_ext::normals_isa_name(lift_ext::normals_isa()));
}

// cpu_isas() -> tuple of str: the paths this machine can run, slowest first.
PyObject* cpu_isas(PyObject* /*self*/, PyObject* /*args*/) {
  PyObject* names = PyList_New(0);
  if (names == nullptr) return nullptr;
  for (int i = 0; i < lift_ext::kNumNormalsIsas; ++i) {
    const auto isa = static_cast<lift_ext::NormalsIsa>(i);
    if (!lift_ext::normals_isa_supported(isa)) continue;
    PyObject* name = PyUnicode_FromString(lift_ext::normals_isa_name(isa));
    const int failed = name == nullptr ? -1 : PyList_Append(names, name);
    Py_XDECREF(name);
    if (failed != 0) {
      Py_DECREF(names);
      return nullptr;
    }
  }
  PyObject* tuple = PyList_AsTuple(names);
  Py_DECREF(names);
  return tuple;
}

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS,
     "The instruction-set path of the CPU normals here: \"avx512\", \"avx2\" or \"generic\"."},
    {"cpu_isas", cpu_isas, METH_NOARGS,
     "Every instruction-set path of the CPU normals this machine can run, slowest first."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                          "lift_ext kernels (registered as torch.ops.lift_ext)", -1, methods,
                          nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
