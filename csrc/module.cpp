// The Python module `lift_ext._C`. It only has to exist: loading it runs the static
// TORCH_LIBRARY registrations. Import torch before it.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                          "lift_ext kernels (registered as torch.ops.lift_ext)",
                                          -1, nullptr};
  return PyModule_Create(&module_def);
}
