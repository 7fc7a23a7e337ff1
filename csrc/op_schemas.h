// The operator schemas of the anm_fast library, one list: csrc/ops.cpp defines them for anm_fast,
// the CUDA emulation (csrc/emulation) defines the ones with CUDA kernels again for its own
// library, anm_fast_emulated. anm_fast/_ops.py keeps a copy for builds without the extension (a
// test compares the two).
#pragma once

namespace anm_fast {
namespace schemas {

constexpr const char* kActivationPeaks =
    "activation_peaks(Tensor fmap, int height, int width, float band) -> "
    "(Tensor peak_max, Tensor peak_min, Tensor energy)";
// box_params: the box parameters as one list, in the order of anm_common.h's BoxParams (built by
// anm_fast/config.py's BoxParams from an ANMConfig).
constexpr const char* kSampleBoxes =
    "sample_boxes(Tensor peak_max, Tensor peak_min, Tensor quality, Tensor sample_ids, "
    "Tensor seed, int height, int width, int channels, float[] box_params, Tensor fill_value) -> "
    "(Tensor box_max, Tensor box_min, Tensor ratio, Tensor fill_max, Tensor fill_min)";
constexpr const char* kEraseAndModulate =
    "erase_and_modulate(Tensor x, Tensor targets, Tensor box_max, Tensor box_min, "
    "Tensor fill_max, Tensor fill_min, Tensor ratio, float label_gain) -> "
    "(Tensor erased, Tensor targets_out)";
// Stages 1-3 in one call (activation_peaks -> sample_boxes -> erase_and_modulate, the same
// results). sample_ids None: the batch positions 0..B-1. check_values: the op raises ValueError
// for values it cannot give a meaningful result for (quality outside [0, 1], a non-finite energy;
// the CPU kernel also soft targets off the simplex and an energy that overflowed to zero).
constexpr const char* kAnmMask =
    "anm_mask(Tensor x, Tensor fmap, Tensor targets, Tensor quality, Tensor? sample_ids, "
    "Tensor seed, float band, float[] box_params, Tensor fill_value, float label_gain, "
    "bool check_values) -> "
    "(Tensor erased, Tensor targets_out, Tensor box_max, Tensor box_min, Tensor ratio, "
    "Tensor fill_max, Tensor fill_min, Tensor peak_max, Tensor peak_min, Tensor energy)";
constexpr const char* kEraseAndModulateBackward =
    "erase_and_modulate_backward(Tensor grad_erased, Tensor grad_targets, Tensor targets, "
    "Tensor box_max, Tensor box_min, Tensor ratio, float label_gain) -> "
    "(Tensor grad_x, Tensor grad_targets_in)";

}  // namespace schemas
}  // namespace anm_fast
