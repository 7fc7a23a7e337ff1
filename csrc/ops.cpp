// Operator schemas of the anm_fast library: defined once here, implemented per device in
// csrc/cpu and csrc/cuda. The Python side (anm_fast/_ops.py) adds fake (meta) kernels and
// autograd. All ops are functional: randomness enters as the `seed` tensor, sampled parameters
// leave as outputs, so they can be replayed and tested.
#include <Python.h>
#include <torch/library.h>

#include "python_entry.h"

extern "C" {
// Importing anm_fast._C runs the static registrations below; the module's one method is the
// fused op's direct entry (python_entry.cpp).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                          anm_fast::python_methods()};
  return PyModule_Create(&module_def);
}
}

#ifndef ANM_FAST_WITH_CUDA
#define ANM_FAST_WITH_CUDA 0
#endif

TORCH_LIBRARY(anm_fast, m) {
  // Build information: whether csrc/cuda was compiled into this extension.
  m.def("_built_with_cuda() -> bool", []() -> bool { return ANM_FAST_WITH_CUDA != 0; });
  m.def("activation_peaks(Tensor fmap, int height, int width, float band) -> "
        "(Tensor peak_max, Tensor peak_min, Tensor energy)");
  m.def("sample_boxes(Tensor peak_max, Tensor peak_min, Tensor quality, Tensor sample_ids, "
        "Tensor seed, int height, int width, int channels, float area_lo, float area_hi, "
        "float quality_gain, float aspect_lo, float area_scale, bool center_anchor, "
        "bool uniform_fill, Tensor fill_value) -> "
        "(Tensor box_max, Tensor box_min, Tensor ratio, Tensor fill_max, Tensor fill_min)");
  m.def("erase_and_modulate(Tensor x, Tensor targets, Tensor box_max, Tensor box_min, "
        "Tensor fill_max, Tensor fill_min, Tensor ratio, float label_gain) -> "
        "(Tensor erased, Tensor targets_out)");
  // Stages 1-3 in one call (activation_peaks -> sample_boxes -> erase_and_modulate, the same
  // results), with the value checks of the Python API when check_values. Not differentiable: the
  // Python API uses it when no input needs a gradient, the three ops otherwise. seed_out is a
  // 0-d int64 copy of the seed (the one MaskBatch hands back: made here, it costs the Python
  // layer no tensor creation of its own).
  m.def("anm_mask(Tensor x, Tensor fmap, Tensor targets, Tensor quality, Tensor sample_ids, "
        "Tensor seed, float band, float area_lo, float area_hi, float quality_gain, "
        "float aspect_lo, float area_scale, bool center_anchor, bool uniform_fill, "
        "Tensor fill_value, float label_gain, bool check_values) -> "
        "(Tensor erased, Tensor targets_out, Tensor box_max, Tensor box_min, Tensor ratio, "
        "Tensor fill_max, Tensor fill_min, Tensor peak_max, Tensor peak_min, Tensor energy, "
        "Tensor seed_out)");
  m.def("erase_and_modulate_backward(Tensor grad_erased, Tensor grad_targets, Tensor targets, "
        "Tensor box_max, Tensor box_min, Tensor ratio, float label_gain) -> "
        "(Tensor grad_x, Tensor grad_targets_in)");
}
