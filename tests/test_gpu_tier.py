"""`make test-gpu` without a GPU (tools/gpu_tier.py): the wheel chosen for fake nvidia-smi outputs,
the skip path (exit 0, with the reason), and the moving-variance oracle of tests/gpu on made-up data."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests" / "gpu"))
import gpu_tier  # noqa: E402
import test_gpu as gpu_tests  # noqa: E402  (only its helpers are used; its tests stay in tests/gpu)

HEADER_550 = """Sun Nov 29 17:00:00 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|   0  NVIDIA H200                    On  |   00000000:19:00.0 Off |                    0 |
+-----------------------------------------+------------------------+----------------------+
"""
HEADER_470 = """+-----------------------------------------------------------------------------+
| NVIDIA-SMI 470.57.02    Driver Version: 470.57.02    CUDA Version: 11.4     |
|-------------------------------+----------------------+----------------------+
"""
LIST_2 = ("GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5f1c2a9e-0000-0000-0000-000000000000)\n"
          "GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-5f1c2a9e-0000-0000-0000-000000000001)\n")


# ---- parsing nvidia-smi and choosing the wheel ---------------------------------------------------

@pytest.mark.parametrize("text, expected", [(HEADER_550, (12, 4)), (HEADER_470, (11, 4)),
                                            ("| CUDA Version: 10.2 |", (10, 2))])
def test_parse_cuda_version(text, expected):
    assert gpu_tier.parse_cuda_version(text) == expected


@pytest.mark.parametrize("text", ["| NVIDIA-SMI 550.54.15  Driver Version: 550.54.15  CUDA Version: N/A |",
                                  "No devices were found", ""])
def test_parse_cuda_version_refuses_other_text(text):
    with pytest.raises(ValueError, match="no 'CUDA Version: X.Y'"):
        gpu_tier.parse_cuda_version(text)


def test_parse_gpus():
    assert gpu_tier.parse_gpus(LIST_2) == ["NVIDIA A100-SXM4-40GB"] * 2
    assert gpu_tier.parse_gpus("GPU 0: Tesla T4 (UUID: GPU-1)\n") == ["Tesla T4"]
    assert gpu_tier.parse_gpus("No devices were found\n") == []


@pytest.mark.parametrize("cuda, wheel", [
    ((12, 4), "mxnet-cu117"), ((13, 0), "mxnet-cu117"),   # newer drivers run the newest build, cu117
    ((11, 8), "mxnet-cu117"), ((11, 7), "mxnet-cu117"),
    ((11, 6), "mxnet-cu116"), ((11, 4), "mxnet-cu114"),
    ((11, 2), "mxnet-cu112"), ((11, 1), "mxnet-cu111"), ((11, 0), "mxnet-cu110"),
    ((10, 2), "mxnet-cu102"), ((10, 1), "mxnet-cu101"),
])
def test_choose_wheel(cuda, wheel):
    assert gpu_tier.choose_wheel(cuda) == wheel


def test_choose_wheel_never_above_the_driver():
    """For every driver version from 10.1 to 12.9 the wheel's CUDA is <= the driver's, and the newest
    such: the rule, checked against the table rather than restated."""
    for major in (10, 11, 12):
        for minor in range(10):
            cuda = (major, minor)
            if cuda < (10, 1):
                continue
            chosen = {v: k for k, v in gpu_tier.WHEELS.items()}[gpu_tier.choose_wheel(cuda)]
            assert chosen <= cuda
            assert not any(chosen < v <= cuda for v in gpu_tier.WHEELS)


@pytest.mark.parametrize("cuda", [(10, 0), (9, 2)])
def test_choose_wheel_driver_too_old(cuda):
    with pytest.raises(ValueError, match=rf"CUDA {cuda[0]}\.{cuda[1]}, older than every mxnet 1\.9\.1 "
                                         r"CUDA build .*update the NVIDIA driver"):
        gpu_tier.choose_wheel(cuda)


@pytest.mark.parametrize("bad", ["12.4", (12,), (12, "4"), (12, -1), [11, 7]])
def test_choose_wheel_bad_argument(bad):
    with pytest.raises(TypeError, match="cuda must be a"):
        gpu_tier.choose_wheel(bad)


def test_requirements_for_swaps_only_mxnet():
    text = (ROOT / "requirements.txt").read_text()
    out = gpu_tier.requirements_for("mxnet-cu112", text).splitlines()
    assert "mxnet-cu112==1.9.1" in out and "mxnet==1.9.1" not in out
    numpy_pins = [line for line in text.splitlines() if line.startswith("numpy")]
    assert numpy_pins and all(pin in out for pin in numpy_pins)      # numpy pinned as requirements.txt
    assert len(out) == len(text.splitlines())
    with pytest.raises(ValueError, match="no 'mxnet' line"):
        gpu_tier.requirements_for("mxnet-cu112", "numpy<1.24\n")


# ---- the command, with fake nvidia-smi scripts on a PATH of our own --------------------------------

def fake_path(tmp_path, smi_script=None):
    """A PATH holding make, bash and python3 (links to the real programs; python3 is the interpreter
    running the tests, since a python3 on PATH may be a pyenv shim that needs more) and, if given, a
    fake nvidia-smi."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = {"make": shutil.which("make"), "bash": shutil.which("bash"),
             "python3": os.path.realpath(sys.executable)}
    for tool, real in tools.items():
        assert real, f"{tool} not on PATH"
        (bin_dir / tool).symlink_to(os.path.realpath(real))
    if smi_script is not None:
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/bash\n" + smi_script)
        smi.chmod(0o755)
    return str(bin_dir)


def run(cmd, path, **env):
    environ = {k: v for k, v in os.environ.items() if k != "D2LBN_MXNET_CUDA_WHEEL"}
    environ.update(PATH=path, **env)
    return subprocess.run(cmd, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120)


def test_make_test_gpu_without_nvidia_smi_skips_with_reason(tmp_path):
    done = run(["make", "--no-print-directory", "test-gpu"], fake_path(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "GPU tier skipped: no nvidia-smi on PATH" in done.stdout
    assert "Nothing was installed or run" in done.stdout


@pytest.mark.parametrize("script, reason", [
    ('echo "No devices were found"; exit 6\n', "failed with exit code 6: No devices were found"),
    ('echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."; exit 9\n',
     "failed with exit code 9: NVIDIA-SMI has failed because it couldn't communicate"),
    ('[[ $1 == -L ]] && exit 0; echo "| CUDA Version: 12.4 |"\n', "nvidia-smi lists no GPU"),
])
def test_broken_or_empty_nvidia_smi_skips_with_reason(tmp_path, script, reason):
    done = run([sys.executable, "tools/gpu_tier.py"], fake_path(tmp_path, script))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "GPU tier skipped: " in done.stdout and reason in done.stdout


def smi_with(header, listing):
    return f"if [[ $1 == -L ]]; then printf '%s' '{listing}'; else printf '%s' '{header}'; fi\n"


@pytest.mark.parametrize("header, wheel", [(HEADER_550, "mxnet-cu117"), (HEADER_470, "mxnet-cu114")])
def test_dry_run_with_a_gpu_plans_the_matching_wheel(tmp_path, header, wheel):
    venv = tmp_path / "venv-gpu"
    done = run([sys.executable, "tools/gpu_tier.py", "--dry-run", "--venv", str(venv)],
               fake_path(tmp_path, smi_with(header, LIST_2)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 GPU(s) (NVIDIA A100-SXM4-40GB, NVIDIA A100-SXM4-40GB)" in done.stdout
    assert f"wheel {wheel}==1.9.1 (the newest build not above the driver's CUDA)" in done.stdout
    assert f"  {wheel}==1.9.1\n  numpy>=1.23,<1.24\n" in done.stdout
    assert "D2LBN_REQUIRE_GPU=1 " in done.stdout and "-m pytest -m gpu" in done.stdout
    assert "--no-deps -e" in done.stdout
    assert not venv.exists()                      # a dry run creates nothing


def test_wheel_override_and_its_check(tmp_path):
    path = fake_path(tmp_path, smi_with(HEADER_550, LIST_2))
    cmd = [sys.executable, "tools/gpu_tier.py", "--dry-run", "--venv", str(tmp_path / "v")]
    done = run(cmd, path, D2LBN_MXNET_CUDA_WHEEL="mxnet-cu112")
    assert done.returncode == 0 and "wheel mxnet-cu112==1.9.1 (D2LBN_MXNET_CUDA_WHEEL)" in done.stdout
    done = run(cmd, path, D2LBN_MXNET_CUDA_WHEEL="mxnet-cu999")
    assert done.returncode == 2 and "D2LBN_MXNET_CUDA_WHEEL must be one of" in done.stderr


def test_driver_too_old_fails(tmp_path):
    done = run([sys.executable, "tools/gpu_tier.py", "--dry-run"],
               fake_path(tmp_path, smi_with("| CUDA Version: 9.2 |", "GPU 0: Tesla K80 (UUID: GPU-1)\n")))
    assert done.returncode == 1 and "update the NVIDIA driver" in done.stderr


# ---- the GPU tests' moving-variance oracle, on made-up stored variances ------------------------------

@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 2, 2)])
def test_variance_convention_tells_biased_from_unbiased(shape, rng):
    x = rng.normal(1.0, 2.0, size=shape)
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    m = x.size // shape[1]
    biased = x.var(axis=axes)
    assert gpu_tests.variance_convention(x, biased.astype(np.float32)) == "biased"
    assert gpu_tests.variance_convention(x, biased * m / (m - 1)) == "unbiased"
    with pytest.raises(AssertionError, match="matches neither of the hypotheses"):
        gpu_tests.variance_convention(x, biased * 1.01)


def test_gluon_moving_var_prediction():
    """One step from 1 with momentum 0.9: ours holds 0.9 + 0.1 v (biased v); Gluon under 'unbiased'
    holds 0.9 + 0.1 v m / (m - 1)."""
    v, m = np.array([2.0, 0.5]), 4
    ours = 0.9 + 0.1 * v
    np.testing.assert_allclose(gpu_tests.expected_gluon_moving_var(ours, m, "biased"), ours)
    np.testing.assert_allclose(gpu_tests.expected_gluon_moving_var(ours, m, "unbiased"),
                               0.9 + 0.1 * v * 4 / 3)


def test_gpu_tests_fail_rather_than_skip_when_a_gpu_is_required():
    """Under make test-gpu (D2LBN_REQUIRE_GPU=1) an mxnet that sees no GPU fails the tier instead of
    skipping every test; without the variable the same run skips."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu",
           "-k", "device_helpers"]
    env = {k: v for k, v in os.environ.items() if k not in ("D2LBN_GPU_TESTS_ON_CPU", "D2LBN_REQUIRE_GPU")}
    env["PYTHONPATH"] = str(ROOT)
    required = subprocess.run(cmd, cwd=ROOT, env=dict(env, D2LBN_REQUIRE_GPU="1"), capture_output=True,
                              text=True, timeout=300)
    assert required.returncode != 0
    assert "D2LBN_REQUIRE_GPU is set (nvidia-smi lists a GPU) but MXNet sees none" in required.stdout
    plain = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and "1 skipped" in plain.stdout, plain.stdout


def test_main_builds_once_then_reuses_the_venv(tmp_path, monkeypatch):
    """The non-dry run with subprocess.run recorded instead of run: it builds the venv (make_venv.sh,
    pip, the requirements file with the CUDA wheel, d2lbn --no-deps), stamps it, runs pytest -m gpu
    with D2LBN_REQUIRE_GPU=1 and returns pytest's exit code; a second run reuses the venv."""
    venv = tmp_path / "venv-gpu"
    calls = []

    class Done:
        returncode = 3                                   # pytest's code, passed through

    def fake_run(cmd, check=False, **kwargs):
        calls.append((cmd, kwargs.get("env")))
        if cmd[0].endswith("make_venv.sh"):
            Path(cmd[1]).mkdir()
        return Done()

    monkeypatch.setattr(gpu_tier, "detect", lambda: (["NVIDIA H200"], (12, 4)))
    monkeypatch.setattr(gpu_tier.subprocess, "run", fake_run)
    monkeypatch.delenv("D2LBN_MXNET_CUDA_WHEEL", raising=False)
    assert gpu_tier.main(["--venv", str(venv)]) == 3
    commands = [cmd for cmd, _ in calls]
    assert commands[0] == [str(ROOT / "tools" / "make_venv.sh"), str(venv)]
    assert commands[2][-2:] == ["-r", str(venv / "requirements-gpu.txt")]
    assert commands[3][-3:] == ["--no-deps", "-e", str(ROOT)]
    assert commands[4][1:5] == ["-m", "pytest", "-m", "gpu"] and len(commands) == 5
    assert calls[4][1]["D2LBN_REQUIRE_GPU"] == "1"
    assert "mxnet-cu117==1.9.1\n" in (venv / "requirements-gpu.txt").read_text()
    assert (venv / ".installed").read_text().startswith("mxnet-cu117\n")
    calls.clear()
    assert gpu_tier.main(["--venv", str(venv)]) == 3
    assert len(calls) == 1 and calls[0][0][1:5] == ["-m", "pytest", "-m", "gpu"]
    # another wheel (the override) rebuilds
    calls.clear()
    monkeypatch.setenv("D2LBN_MXNET_CUDA_WHEEL", "mxnet-cu112")
    monkeypatch.setattr(gpu_tier, "detect", lambda: (["NVIDIA H200"], (12, 4)))
    Path(venv).joinpath("pyvenv.cfg").write_text("")      # make_venv.sh would reuse the folder
    monkeypatch.setattr(gpu_tier.subprocess, "run",
                        lambda cmd, check=False, **kw: calls.append(cmd) or Done())
    assert gpu_tier.main(["--venv", str(venv)]) == 3
    assert len(calls) == 5 and "mxnet-cu112==1.9.1\n" in (venv / "requirements-gpu.txt").read_text()


# ---- the cuDNN statistics tests (tests/gpu/test_cudnn_statistics.py) without a GPU ------------------

def test_expected_moving_statistics_oracle():
    """One update from 0 and 1 with momentum 0.9 on x = (1, 2, 3, 6): mean 3, biased variance 3.5,
    unbiased 14/3 (the numbers of chapter 2)."""
    import test_cudnn_statistics as cudnn_tests
    x = np.array([[1.0], [2.0], [3.0], [6.0]])
    mean, var = cudnn_tests.expected_moving(x, 0.9, "biased")
    np.testing.assert_allclose([mean[0], var[0]], [0.3, 0.9 + 0.35])
    mean, var = cudnn_tests.expected_moving(x, 0.9, "unbiased")
    np.testing.assert_allclose([mean[0], var[0]], [0.3, 0.9 + 0.1 * 14 / 3])
    with pytest.raises(ValueError, match="convention must be"):
        cudnn_tests.expected_moving(x, 0.9, "sample")


def test_cudnn_tests_on_the_cpu_skip_cudnn_and_check_the_cpu_kernel():
    """D2LBN_GPU_TESTS_ON_CPU=1: the cuDNN tests skip with the reason (a CPU has no cuDNN), the
    cudnn_off=True tests run on cpu(1) and pass, because the CPU kernel updates in backward() and
    stores the biased variance, which is what they assert for MXNet's own GPU kernel."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
           "tests/gpu/test_cudnn_statistics.py"]
    env = {k: v for k, v in os.environ.items() if k != "D2LBN_REQUIRE_GPU"}
    env.update(PYTHONPATH=str(ROOT), D2LBN_GPU_TESTS_ON_CPU="1")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed, 6 skipped" in done.stdout, done.stdout
    assert "D2LBN_GPU_TESTS_ON_CPU: cuDNN exists only on a GPU" in done.stdout
