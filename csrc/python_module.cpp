// Makes the library importable as the Python module pan_ops._C; importing it runs
// the TORCH_LIBRARY registrations. Built by setup.py only (CMake builds a plain
// shared library for torch.ops.load_library).
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
