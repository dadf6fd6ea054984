"""The wheel as a user gets it: built from this tree, installed alone into a fresh virtual
environment, `pan-reid` runs from a folder outside the repository on the packaged recipes and
the compiled CPU kernel.

The new environment sees the dependencies already installed here (torch, numpy, ...) through a
.pth file that lists their folders: a plain path line adds a folder to sys.path without running
the .pth files in it, so the editable install of this repository stays invisible there."""

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tools import cpu_isa

REPO = Path(__file__).resolve().parent.parent
DEPENDENCIES = ("torch", "torchvision", "numpy", "yaml", "tqdm", "PIL", "matplotlib", "safetensors", "triton")

pytestmark = pytest.mark.slow  # compiles the extension: about two minutes on two cores


def _run(command, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _source_copy(destination: Path) -> Path:
    """The files a clone of the working tree holds (tracked, or new and not ignored): the build
    then neither writes into the repository nor picks up what was built in place there."""
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO).stdout
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file may have been deleted in the working tree
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def _dependency_folders() -> list[str]:
    folders = set()
    for name in DEPENDENCIES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            folders.add(str(Path(spec.origin).resolve().parents[1]))  # <folder>/<package>/__init__.py
    return sorted(folders)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to list the source files")
    source = _source_copy(tmp_path_factory.mktemp("source"))
    wheelhouse = tmp_path_factory.mktemp("wheelhouse")
    env = {**os.environ, "PAN_OPS_NO_CUDA": "1", "MAX_JOBS": os.environ.get("MAX_JOBS", "2")}
    env.pop("PAN_OPS_MARCH", None)  # the default build, the one a wheel is made with
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(wheelhouse), str(source)],
        env=env,
        timeout=900,
    )
    (built,) = wheelhouse.glob("pan_reid-*.whl")
    return built


@pytest.fixture(scope="module")
def environment(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment holding the wheel, then the dependencies made visible."""
    folder = tmp_path_factory.mktemp("venv")
    venv.create(folder, with_pip=False, symlinks=True)
    python = folder / "bin" / "python"
    # Installed before the dependencies' folders are visible, so that pip sees no pan-reid there.
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)])
    site_packages = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout
    Path(site_packages.strip(), "pan_dependencies.pth").write_text("\n".join(_dependency_folders()) + "\n")
    return folder


def _clean_env() -> dict:
    """This environment's variables without what would put the repository on sys.path."""
    return {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "PYTHONHOME")}


def test_wheel_holds_the_recipes_and_the_extension_but_no_tests(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    recipes = {path.relative_to(REPO).as_posix() for path in (REPO / "pan_model" / "configs").rglob("*.yaml")}
    assert "pan_model/configs/ablations/gamma_14.yaml" in recipes
    assert {name for name in names if name.startswith("pan_model/configs/")} == recipes
    assert any(name.startswith("pan_ops/_C") and name.endswith(".so") for name in names)
    # Only the two packages and their metadata: no tests, csrc, benchmarks, tools or experiments.
    top_level = {name.split("/")[0] for name in names}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"pan_ops", "pan_model"}


@pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("objdump") is None, reason="x86-64 and objdump")
def test_wheel_extension_runs_on_any_x86_64_cpu(wheel, tmp_path):
    """Built without PAN_OPS_MARCH, the extension dispatches: its CPU kernel has the levels
    default, avx2 and avx512, and all code outside avx2 and avx512 holds no AVX instruction (no
    VEX or EVEX encoding), nor does the code its static initialisers run; the avx2 level holds no
    AVX-512 (EVEX) instruction. So it loads on any x86-64 CPU and runs only the level torch picks
    for it (tools/cpu_isa.py). (The native in-place build of 2026-12-02 had 83,626 AVX mnemonics
    throughout.)"""
    archive = zipfile.ZipFile(wheel)
    (library,) = [name for name in archive.namelist() if name.startswith("pan_ops/_C") and name.endswith(".so")]
    assert not cpu_isa.problems(cpu_isa.functions(archive.extract(library, tmp_path)))[:5]


def test_installed_wheel_runs_outside_the_repository(environment, tmp_path):
    python, pan_reid = environment / "bin" / "python", environment / "bin" / "pan-reid"
    env = _clean_env()
    # The packages come from the new environment, and the CPU kernel runs and agrees with the
    # reference, at the level torch picks and at the baseline level that ATEN_CPU_CAPABILITY forces.
    check = (
        "import importlib.util, torch, pan_ops, pan_model\n"
        "print(pan_ops.__file__, pan_model.__file__, importlib.util.find_spec('pan_ops._C').origin)\n"
        "f, m = torch.randn(2, 8, 4, 3, dtype=torch.float64), torch.rand(2, 3, 4, 3, dtype=torch.float64)\n"
        "torch.testing.assert_close(pan_ops.weighted_pool(f, m, backend='cpu'), pan_ops.reference.weighted_pool(f, m))\n"
        "print(pan_ops.cpu_capability(), torch.backends.cpu.get_cpu_capability())\n"
    )
    *located, level, torch_capability = _run([str(python), "-c", check], cwd=tmp_path, env=env).stdout.split()
    for path in located:
        assert Path(path).resolve().is_relative_to(environment.resolve()), located
    assert level == cpu_isa.level_of_capability(torch_capability)
    forced = _run([str(python), "-c", check], cwd=tmp_path, env={**env, "ATEN_CPU_CAPABILITY": "default"}).stdout
    assert forced.split()[-2:] == ["default", "DEFAULT"]

    # A packaged recipe by name, its _base_ resolved inside the package: two tiny epochs.
    trained = _run(
        [str(pan_reid), "train", "smoke", f"data.root={tmp_path / 'data'}", f"output_dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        env=env,
        timeout=600,
    ).stdout
    assert "# resolved config" in trained and "backbone: osnet_x0_25" in trained  # smoke.yaml
    assert "num_parts: 14" in trained  # from its base, base.yaml
    assert (tmp_path / "run" / "model_best.pt").is_file()
