// Stage 2 for one sample on the CPU: box shape and placement at both peaks, and the fills, from
// the sample's Philox stream (anm_common.h). Used by sample_boxes (sample_boxes_cpu.cpp) and the
// fused anm_mask (anm_mask_cpu.cpp).
#pragma once

#include <algorithm>
#include <cstdint>

#include "../anm_common.h"

namespace anm_fast {
namespace cpu {

// Writes box_max[0..3] and box_min[0..3] (y0, x0, height, width), the C fills of each box
// (uniform draws, or `fill_value` when !uniform_fill); returns the mask ratio s.
inline float sample_box_and_fills(int64_t seed, int64_t sample_id, float quality, int64_t H,
                                  int64_t W, int64_t C, const BoxParams& params,
                                  const int64_t* peak_max, const int64_t* peak_min,
                                  bool uniform_fill, const float* fill_value, int64_t* box_max,
                                  int64_t* box_min, float* fill_max, float* fill_min) {
  const BoxShape shape = box_shape(seed, sample_id, quality, H, W, params);
  int64_t* out[2] = {box_max, box_min};
  const int64_t* peak[2] = {peak_max, peak_min};
  for (int which = 0; which < 2; ++which) {
    place_box(peak[which][0], peak[which][1], shape.bh, shape.bw, H, W, params.center_anchor,
              &out[which][0], &out[which][1]);
    out[which][2] = shape.bh;
    out[which][3] = shape.bw;
  }
  if (uniform_fill) {
    // Draw j of 0..2C-1 is word j % 4 of fill block j / 4 (the same bits as fill_draw): each
    // Philox block is computed once for its four draws.
    for (int64_t j0 = 0; j0 < 2 * C; j0 += 4) {
      const Words4 words = sample_stream(seed, sample_id,
                                         kFillBlock0 + static_cast<uint32_t>(j0 / 4));
      for (int64_t j = j0; j < std::min<int64_t>(j0 + 4, 2 * C); ++j) {
        const float u = uniform_f32(words.w[j - j0]);
        if (j < C) fill_max[j] = u; else fill_min[j - C] = u;
      }
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      fill_max[c] = fill_value[c];
      fill_min[c] = fill_value[c];
    }
  }
  return static_cast<float>(shape.ratio);
}

}  // namespace cpu
}  // namespace anm_fast
