// Operator schemas of the anm_fast library (op_schemas.h): defined here, implemented per device in
// csrc/cpu and csrc/cuda. The Python side (anm_fast/_ops.py) adds fake (meta) kernels and
// autograd. All ops are functional: randomness enters as the `seed` tensor, sampled parameters
// leave as outputs, so they can be replayed and tested.
#include <Python.h>
#include <torch/library.h>

#include "op_schemas.h"

extern "C" {
// Importing anm_fast._C runs the static registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

#ifndef ANM_FAST_WITH_CUDA
#define ANM_FAST_WITH_CUDA 0
#endif

TORCH_LIBRARY(anm_fast, m) {
  // Build information: whether csrc/cuda was compiled into this extension.
  m.def("_built_with_cuda() -> bool", []() -> bool { return ANM_FAST_WITH_CUDA != 0; });
  m.def(anm_fast::schemas::kActivationPeaks);
  m.def(anm_fast::schemas::kSampleBoxes);
  m.def(anm_fast::schemas::kEraseAndModulate);
  m.def(anm_fast::schemas::kAnmMask);
  m.def(anm_fast::schemas::kEraseAndModulateBackward);
}
