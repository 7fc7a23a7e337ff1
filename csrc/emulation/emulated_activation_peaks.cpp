// csrc/cuda/activation_peaks_cuda.cu compiled for the CUDA emulation (cuda_emulation.h).
#include "cuda_emulation.h"
#include "../cuda/activation_peaks_cuda.cu"
