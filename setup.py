"""Builds anm_fast._C: the C++ CPU kernels always, the CUDA kernels whenever a CUDA toolkit is found.

Switches (environment variables):
  ANM_FAST_SKIP_CUDA=1     build the CPU kernels only, even with a CUDA toolkit present.
  ANM_FAST_FORCE_CUDA=1    fail instead of silently skipping CUDA when no toolkit is found.
  TORCH_CUDA_ARCH_LIST     GPU architectures (default "8.0;9.0" when no GPU is visible).
  MAX_JOBS                 parallel compile jobs (default: from the core count and memory).
Whether CUDA is built never depends on a GPU being visible, only on the toolkit (CUDA_HOME).
"""
import glob
import os
import sys

from setuptools import setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _cuda_home():
    home = cpp_extension.CUDA_HOME
    if home is None and os.path.exists("/usr/local/cuda/bin/nvcc"):
        home = "/usr/local/cuda"
        cpp_extension.CUDA_HOME = home
    return home


def _default_jobs():
    if "MAX_JOBS" in os.environ:
        return
    cores = os.cpu_count() or 1
    try:  # each nvcc/g++ job against torch headers can take ~1.5 GiB
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        cores = max(1, min(cores, int(mem_gib // 1.5)))
    except (ValueError, OSError, AttributeError):
        pass
    os.environ["MAX_JOBS"] = str(cores)


def extensions():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    cxx = ["-O3", "-ffp-contract=off"]  # the C++ standard is the one torch asks for
    link = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is a header template: without -fopenmp its `#pragma omp parallel` is
        # dropped and every CPU kernel runs on one thread. libgomp.so.1 is the one torch loads.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    define_macros = []
    use_cuda = (not _flag("ANM_FAST_SKIP_CUDA")) and bool(cuda_sources) and _cuda_home() is not None
    use_cuda = use_cuda and torch.version.cuda is not None
    if _flag("ANM_FAST_FORCE_CUDA") and not use_cuda:
        raise RuntimeError("ANM_FAST_FORCE_CUDA=1 but no CUDA toolkit (CUDA_HOME) or CUDA torch found")
    if use_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        define_macros.append(("ANM_FAST_WITH_CUDA", "1"))
        print(f"anm_fast: building CPU + CUDA kernels (CUDA_HOME={cpp_extension.CUDA_HOME}, "
              f"archs={os.environ.get('TORCH_CUDA_ARCH_LIST', 'visible GPU')})")
        return [cpp_extension.CUDAExtension(
            "anm_fast._C", sources + cuda_sources, define_macros=define_macros,
            extra_link_args=link, extra_compile_args={"cxx": cxx,
                                "nvcc": ["-O3", "--fmad=false", "-lineinfo"]},
        )]
    print("anm_fast: building CPU kernels only (no CUDA toolkit found or ANM_FAST_SKIP_CUDA=1)")
    return [cpp_extension.CppExtension("anm_fast._C", sources, define_macros=define_macros,
                                       extra_link_args=link, extra_compile_args={"cxx": cxx})]


_default_jobs()
setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
