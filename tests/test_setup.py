"""setup.py's CUDA toolkit discovery: the toolkit it finds serves compiling and linking alike,
with or without CUDA_HOME exported, including a `nvcc` on the PATH that is a wrapper script (as
/usr/local/bin/nvcc is on this project's machines) and a toolkit without an unversioned
libcudart.so (torch's nvidia-* wheels carry only libcudart.so.N)."""
import glob
import importlib.util
import os
import pathlib
import textwrap

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def setup_py(monkeypatch):
    spec = importlib.util.spec_from_file_location("anm_fast_setup", ROOT / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # __name__ is not "__main__": setup() itself does not run
    for name in ("CUDA_HOME", "CUDA_PATH", "ANM_FAST_SKIP_CUDA", "ANM_FAST_FORCE_CUDA"):
        monkeypatch.delenv(name, raising=False)
    return mod


def _script(path, body):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)


def fake_toolkit(root, release="13.0", cudart=True):
    """A folder shaped like a CUDA toolkit whose nvcc answers --version and --dryrun as nvcc does."""
    _script(root / "bin" / "nvcc", f"""\
        case "$*" in
          *--dryrun*) echo '#$ TOP={root}/bin/..' >&2 ;;
          *) echo 'Cuda compilation tools, release {release}, V{release}.1' ;;
        esac
        """)
    (root / "include").mkdir(parents=True, exist_ok=True)
    (root / "include" / "cuda_runtime.h").write_text("")
    if cudart:
        (root / "lib64").mkdir(parents=True, exist_ok=True)
        (root / "lib64" / "libcudart.so").write_text("")
    return root


def test_cuda_home_is_taken_when_set(setup_py, tmp_path, monkeypatch):
    tk = fake_toolkit(tmp_path / "tk")
    monkeypatch.setenv("CUDA_HOME", str(tk))
    assert setup_py.find_toolkit() == (str(tk.resolve()), None)


def test_wrapper_nvcc_on_path_names_its_real_toolkit(setup_py, tmp_path, monkeypatch):
    """Without CUDA_HOME: the toolkit is the one nvcc reports, not the folder above the wrapper."""
    tk = fake_toolkit(tmp_path / "cuda-13.0")
    _script(tmp_path / "usr-local" / "bin" / "nvcc", f'exec {tk}/bin/nvcc "$@"\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'usr-local' / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(setup_py, "FALLBACK_TOOLKIT", str(tmp_path / "absent"))
    assert setup_py.find_toolkit() == (str(tk.resolve()), None)


def test_cuda_home_that_is_no_toolkit_is_passed_over(setup_py, tmp_path, monkeypatch):
    tk = fake_toolkit(tmp_path / "tk")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "not-a-toolkit"))
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(setup_py, "FALLBACK_TOOLKIT", str(tk))
    assert setup_py.find_toolkit() == (str(tk.resolve()), None)


def test_no_toolkit_gives_a_reason_and_force_cuda_fails_with_it(setup_py, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(setup_py, "FALLBACK_TOOLKIT", str(tmp_path / "absent"))
    home, why = setup_py.find_toolkit()
    assert home is None and "no CUDA toolkit" in why
    monkeypatch.setenv("ANM_FAST_FORCE_CUDA", "1")
    with pytest.raises(RuntimeError, match="ANM_FAST_FORCE_CUDA=1 .*no CUDA toolkit"):
        setup_py.extensions()


def test_skip_cuda_flag(setup_py, monkeypatch):
    monkeypatch.setenv("ANM_FAST_SKIP_CUDA", "1")
    assert setup_py.cuda_plan() == (None, "ANM_FAST_SKIP_CUDA=1")


needs_cuda_torch = pytest.mark.skipif(torch.version.cuda is None, reason="torch is a CPU-only build")


@needs_cuda_torch
def test_toolkit_release_must_match_torch(setup_py, tmp_path, monkeypatch):
    other = int(torch.version.cuda.split(".")[0]) - 1
    monkeypatch.setenv("CUDA_HOME", str(fake_toolkit(tmp_path / "tk", release=f"{other}.4")))
    plan, why = setup_py.cuda_plan()
    assert plan is None and f"release {other}.4" in why and torch.version.cuda in why


@needs_cuda_torch
def test_cudart_from_torch_wheels_when_the_toolkit_has_none(setup_py, tmp_path):
    major = torch.version.cuda.split(".")[0]
    site = pathlib.Path(torch.__file__).parents[1]
    if not glob.glob(str(site / "nvidia" / "**" / f"libcudart.so.{major}"), recursive=True):
        pytest.skip("this torch does not come with nvidia-* wheels")
    tk = fake_toolkit(tmp_path / "tk", release=torch.version.cuda, cudart=False)
    libdir = setup_py.cudart_dir(str(tk), str(tmp_path / "build"))
    link = pathlib.Path(libdir) / "libcudart.so"
    assert link.is_symlink() and link.resolve().name == f"libcudart.so.{major}"


@needs_cuda_torch
@pytest.mark.skipif(not os.path.exists("/usr/local/cuda/bin/nvcc"), reason="no CUDA toolkit here")
@pytest.mark.parametrize("cuda_home", [None, "/usr/local/cuda"])
def test_this_machines_toolkit_with_and_without_cuda_home(setup_py, tmp_path, monkeypatch, cuda_home):
    if cuda_home:
        monkeypatch.setenv("CUDA_HOME", cuda_home)
    plan, why = setup_py.cuda_plan()
    assert plan is not None, why
    home, libdir = plan
    assert home == os.path.realpath("/usr/local/cuda")
    assert os.path.exists(os.path.join(libdir, "libcudart.so"))
