// csrc/cuda/erase_and_modulate_cuda.cu compiled for the CUDA emulation (cuda_emulation.h).
#include "cuda_emulation.h"
#include "../cuda/erase_and_modulate_cuda.cu"
