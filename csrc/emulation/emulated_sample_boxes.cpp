// csrc/cuda/sample_boxes_cuda.cu compiled for the CUDA emulation (cuda_emulation.h).
#include "cuda_emulation.h"
#include "../cuda/sample_boxes_cuda.cu"
