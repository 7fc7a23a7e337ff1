// The anm_fast_emulated library: the schemas of the ops that have CUDA kernels, implemented for
// CPU tensors by those kernels running on the CUDA emulation (the emulated_*.cpp files compile
// csrc/cuda/*.cu with cuda_emulation.h), plus the emulation's schedule switch. Built as the
// anm_fast._C_emulated extension, for the tests only (the cuda_emulated backend of tests/ops).
#include <Python.h>
#include <torch/library.h>

#include "../op_schemas.h"
#include "cuda_emulation.h"

extern "C" {
// Importing anm_fast._C_emulated runs the registrations below.
PyObject* PyInit__C_emulated(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_emulated", nullptr, -1,
                                          nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(anm_fast_emulated, m) {
  m.def(anm_fast::schemas::kActivationPeaks);
  m.def(anm_fast::schemas::kSampleBoxes);
  m.def(anm_fast::schemas::kEraseAndModulate);
  m.def(anm_fast::schemas::kEraseAndModulateBackward);
  m.def(anm_fast::schemas::kAnmMask);
  // order: 0 lowest thread / block index first, 1 highest first, 2 random (seeded by `seed`).
  m.def("set_schedule(int order, int seed) -> ()", [](int64_t order, int64_t seed) {
    anm_emu::set_schedule(static_cast<int>(order), static_cast<uint64_t>(seed));
  });
  // Kernel launches so far: tests count the launches of an op.
  m.def("launch_count() -> int", []() -> int64_t { return anm_emu::launch_count(); });
}
