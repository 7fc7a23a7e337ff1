"""Builds anm_fast._C: the C++ CPU kernels always, the CUDA kernels whenever a usable CUDA toolkit is found.

Switches (environment variables):
  ANM_FAST_SKIP_CUDA=1     build the CPU kernels only, even with a CUDA toolkit present.
  ANM_FAST_FORCE_CUDA=1    fail instead of building the CPU kernels only when CUDA cannot be built.
  ANM_FAST_SKIP_EMULATION=1  do not build anm_fast._C_emulated (the CUDA kernels compiled by the
                           host compiler for the CUDA emulation that the tests run; no toolkit needed).
  CUDA_HOME / CUDA_PATH    the toolkit to use (else the one `nvcc` on the PATH belongs to, else
                           /usr/local/cuda).
  TORCH_CUDA_ARCH_LIST     GPU architectures (default "8.0;9.0+PTX" when no GPU is visible).
  MAX_JOBS                 parallel compile jobs (default: from the core count and memory).
Whether CUDA is built never depends on a GPU being visible, only on the toolkit.
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0+PTX"  # +PTX: newer GPUs (sm_100, sm_120) JIT-compile the 9.0 PTX
FALLBACK_TOOLKIT = "/usr/local/cuda"  # where the toolkit lives when nothing else names one


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _nvcc_top(nvcc):
    """The toolkit an `nvcc` belongs to, asked of nvcc itself: /usr/local/bin/nvcc is often a
    wrapper script, so the folder above its own path is not the toolkit."""
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.M)
    return os.path.realpath(m.group(1).strip()) if m else None


def _is_toolkit(home):
    return bool(home) and os.path.isfile(os.path.join(home, "bin", "nvcc")) and (
        os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))
        or bool(glob.glob(os.path.join(home, "targets", "*", "include", "cuda_runtime.h"))))


def find_toolkit():
    """(toolkit folder or None, why not): CUDA_HOME, CUDA_PATH, the PATH's nvcc, /usr/local/cuda."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(_nvcc_top(nvcc))
    candidates.append(FALLBACK_TOOLKIT)
    for home in candidates:
        if _is_toolkit(home):
            return os.path.realpath(home), None
    return None, f"no CUDA toolkit (nvcc and cuda_runtime.h) in CUDA_HOME, CUDA_PATH, the PATH or {FALLBACK_TOOLKIT}"


def _toolkit_release(home):
    out = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"],
                         capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def cudart_dir(home, build_dir):
    """A folder holding an unversioned libcudart.so for `-lcudart`: the toolkit's own, else a link
    to the libcudart.so.N of torch's nvidia-* wheels (they ship no unversioned name)."""
    for sub in ("lib64", "lib", os.path.join("targets", "*", "lib")):
        for d in glob.glob(os.path.join(home, sub)):
            if os.path.exists(os.path.join(d, "libcudart.so")):
                return d
    major = torch.version.cuda.split(".")[0]
    site = os.path.dirname(os.path.dirname(torch.__file__))
    for lib in glob.glob(os.path.join(site, "nvidia", "**", f"libcudart.so.{major}"), recursive=True):
        os.makedirs(build_dir, exist_ok=True)
        link = os.path.join(build_dir, "libcudart.so")
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(lib, link)
        return build_dir
    return None


def cuda_plan():
    """(toolkit folder, cudart folder) when the CUDA kernels can be built, else (None, why not)."""
    if _flag("ANM_FAST_SKIP_CUDA"):
        return None, "ANM_FAST_SKIP_CUDA=1"
    if torch.version.cuda is None:
        return None, f"torch {torch.__version__} is a CPU-only build"
    home, why = find_toolkit()
    if home is None:
        return None, why
    release = _toolkit_release(home)
    torch_major = int(torch.version.cuda.split(".")[0])
    if release is None or release[0] != torch_major:
        return None, (f"the CUDA toolkit at {home} is release {release and '%d.%d' % release} but torch "
                      f"{torch.__version__} was built with CUDA {torch.version.cuda}")
    libdir = cudart_dir(home, os.path.join(ROOT, "build", "cudart"))
    if libdir is None:
        return None, f"no libcudart.so in the toolkit at {home} nor in torch's nvidia wheels"
    return (home, libdir), None


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


def emulation_extension():
    """anm_fast._C_emulated: csrc/cuda's kernels compiled by the host compiler against
    csrc/emulation/cuda_emulation.h, run on CPU tensors by the tests (marker cuda_emulated)."""
    return cpp_extension.CppExtension(
        "anm_fast._C_emulated", sorted(glob.glob("csrc/emulation/*.cpp")),
        extra_compile_args={"cxx": ["-O1", "-ffp-contract=off"]})


def extensions():
    emulated = [] if _flag("ANM_FAST_SKIP_EMULATION") else [emulation_extension()]
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") +
                     glob.glob("csrc/autograd/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    cxx = ["-O3", "-ffp-contract=off"]  # the C++ standard is the one torch asks for
    link = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is a header template: without -fopenmp its `#pragma omp parallel` is
        # dropped and every CPU kernel runs on one thread. libgomp.so.1 is the one torch loads.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    plan, why_not = cuda_plan()
    if plan is None:
        if _flag("ANM_FAST_FORCE_CUDA"):
            raise RuntimeError(f"ANM_FAST_FORCE_CUDA=1 but the CUDA kernels cannot be built: {why_not}")
        print(f"anm_fast: building the CPU kernels only ({why_not})")
        return [cpp_extension.CppExtension("anm_fast._C", sources, extra_link_args=link,
                                           extra_compile_args={"cxx": cxx})] + emulated
    home, libdir = plan
    # torch's build helpers read the toolkit from this module global, for nvcc and lib64 alike
    cpp_extension.CUDA_HOME = home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
    print(f"anm_fast: building the CPU + CUDA kernels (toolkit {home}, cudart from {libdir}, "
          f"archs {os.environ.get('TORCH_CUDA_ARCH_LIST', 'of the visible GPU')})")
    return [cpp_extension.CUDAExtension(
        "anm_fast._C", sources + cuda_sources, define_macros=[("ANM_FAST_WITH_CUDA", "1")],
        library_dirs=[libdir], extra_link_args=link,
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--fmad=false", "-lineinfo"]},
    )] + emulated


if __name__ == "__main__":
    _default_jobs()
    setup(
        ext_modules=extensions(),
        cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    )
