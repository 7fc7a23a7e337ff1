// csrc/cuda/anm_mask_cuda.cu compiled for the CUDA emulation (cuda_emulation.h).
#include "cuda_emulation.h"
#include "../cuda/anm_mask_cuda.cu"
