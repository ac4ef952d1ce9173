#!/usr/bin/env python3
"""``make test-gpu``: the GPU tier of the tests (standard library only; any python3 runs it).

1. Ask ``nvidia-smi`` for the GPUs and the driver's CUDA version (the "CUDA Version: X.Y" of its
   header: the newest CUDA runtime the driver can run). No ``nvidia-smi`` on PATH, an error from it,
   or no GPU listed: print "GPU tier skipped: <why>" and exit 0.
2. Choose the CUDA build of mxnet 1.9.1 for that driver (:func:`choose_wheel`): the newest of
   :data:`WHEELS` whose CUDA version is not above the driver's.
   ``D2LBN_MXNET_CUDA_WHEEL=mxnet-cu112`` overrides the choice.
3. Create ``.venv-gpu`` (``tools/make_venv.sh``: Python 3.8-3.11) and install requirements.txt into
   it with its ``mxnet`` line replaced by the chosen wheel (numpy stays pinned as requirements.txt
   pins it), then d2lbn itself (``--no-deps``, so the CPU ``mxnet`` is never pulled in). The venv
   is reused while ``.venv-gpu/.installed`` names the same wheel and requirements.
4. Run ``pytest -m gpu tests/gpu`` in it, with ``D2LBN_REQUIRE_GPU=1``: MXNet seeing no GPU there
   is then a failure, not a skip.

``--dry-run`` prints the plan (wheel, commands) after step 2 and runs nothing; the unit tests
(tests/test_gpu_tier.py) use it with fake ``nvidia-smi`` scripts.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
MXNET_VERSION = "1.9.1"

#: CUDA version -> PyPI name of mxnet 1.9.1 built for it. Every one was checked to exist at 1.9.1
#: with ``pip index versions mxnet-cuXYZ`` (cu118 and later do not exist: cu117 is the newest).
WHEELS = {
    (11, 7): "mxnet-cu117", (11, 6): "mxnet-cu116", (11, 5): "mxnet-cu115",
    (11, 4): "mxnet-cu114", (11, 3): "mxnet-cu113", (11, 2): "mxnet-cu112",
    (11, 1): "mxnet-cu111", (11, 0): "mxnet-cu110", (10, 2): "mxnet-cu102",
    (10, 1): "mxnet-cu101",
}

CUDA_RE = re.compile(r"CUDA Version\s*:\s*(\d+)\.(\d+)")
GPU_RE = re.compile(r"^GPU \d+: (.+?)(?: \(UUID: [^)]*\))?\s*$", re.MULTILINE)


class Skip(Exception):
    """The tier cannot run here; the message says why."""


def parse_cuda_version(smi_header: str) -> Tuple[int, int]:
    """The driver's CUDA version from ``nvidia-smi``'s header ("... CUDA Version: 12.4 |")."""
    if not isinstance(smi_header, str):
        raise TypeError(f"smi_header must be str, got {type(smi_header).__name__}")
    match = CUDA_RE.search(smi_header)
    if match is None:
        raise ValueError("smi_header holds no 'CUDA Version: X.Y' (is it nvidia-smi's output?)")
    return int(match.group(1)), int(match.group(2))


def parse_gpus(smi_list: str) -> List[str]:
    """GPU names from ``nvidia-smi -L`` ("GPU 0: NVIDIA H100 (UUID: GPU-...)" per line)."""
    return GPU_RE.findall(smi_list)


def choose_wheel(cuda: Tuple[int, int]) -> str:
    """The mxnet 1.9.1 CUDA wheel for a driver that runs CUDA ``cuda`` = (major, minor): the newest in
    :data:`WHEELS` not newer than the driver (a driver runs every older CUDA runtime, no newer one).
    ``ValueError`` when the driver is older than every wheel."""
    if (not isinstance(cuda, tuple) or len(cuda) != 2
            or not all(isinstance(v, int) and v >= 0 for v in cuda)):
        raise TypeError(f"cuda must be a (major, minor) tuple of ints >= 0; got {cuda!r}")
    usable = [v for v in WHEELS if v <= cuda]
    if not usable:
        oldest = min(WHEELS)
        raise ValueError(f"the driver runs CUDA {cuda[0]}.{cuda[1]}, older than every mxnet "
                         f"{MXNET_VERSION} CUDA build (the oldest is CUDA {oldest[0]}.{oldest[1]}, "
                         f"{WHEELS[oldest]}): update the NVIDIA driver")
    return WHEELS[max(usable)]


def requirements_for(wheel: str, requirements: str) -> str:
    """requirements.txt's text with its ``mxnet`` line replaced by ``wheel==1.9.1``; the rest
    (numpy's pin included) unchanged. ``ValueError`` if there is no ``mxnet`` line to replace."""
    lines, replaced = [], False
    for line in requirements.splitlines():
        if re.match(r"^\s*mxnet\s*([<>=!~;].*)?$", line):
            lines.append(f"{wheel}=={MXNET_VERSION}")
            replaced = True
        else:
            lines.append(line)
    if not replaced:
        raise ValueError("requirements has no 'mxnet' line to replace with the CUDA build")
    return "\n".join(lines) + "\n"


def _smi(nvidia_smi: str, *args: str) -> str:
    try:
        done = subprocess.run([nvidia_smi, *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise Skip(f"`nvidia-smi {' '.join(args)}` could not run ({err})") from err
    if done.returncode != 0:
        said = (done.stdout + done.stderr).strip().splitlines()
        raise Skip(f"`nvidia-smi {' '.join(args)}` failed with exit code {done.returncode}"
                   + (f": {said[0]}" if said else ""))
    return done.stdout


def detect() -> Tuple[List[str], Tuple[int, int]]:
    """(GPU names, driver CUDA version) from nvidia-smi, or :class:`Skip` saying why not."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        raise Skip("no nvidia-smi on PATH (no NVIDIA driver here, so no GPU to test on)")
    gpus = parse_gpus(_smi(nvidia_smi, "-L"))
    if not gpus:
        raise Skip("nvidia-smi lists no GPU")
    try:
        cuda = parse_cuda_version(_smi(nvidia_smi))
    except ValueError as err:
        raise Skip(f"nvidia-smi's header shows no CUDA version ({err})") from err
    return gpus, cuda


def plan(venv: Path, wheel: str, pytest_args: Sequence[str]) -> List[List[str]]:
    """The commands that build ``venv`` with ``wheel`` (empty list of them when it is up to date)
    and run the gpu tests."""
    py = str(venv / "bin" / "python")
    reqs = str(venv / "requirements-gpu.txt")
    build = [[str(ROOT / "tools" / "make_venv.sh"), str(venv)],
             [py, "-m", "pip", "install", "-q", "--upgrade", "pip"],
             [py, "-m", "pip", "install", "-q", "-r", reqs],
             [py, "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)]]
    test = [py, "-m", "pytest", "-m", "gpu", str(ROOT / "tests" / "gpu"), "-v", "-s", "-rs",
            "-p", "no:cacheprovider", *pytest_args]
    return build + [test]


def stamp_text(wheel: str, requirements: str) -> str:
    return f"{wheel}\n{requirements}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=str(ROOT / ".venv-gpu"))
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("pytest_args", nargs="*", help="extra arguments for pytest")
    args = parser.parse_args(argv)
    try:
        gpus, cuda = detect()
    except Skip as why:
        print(f"GPU tier skipped: {why}. Nothing was installed or run; exit 0.")
        return 0
    override = os.environ.get("D2LBN_MXNET_CUDA_WHEEL", "")
    if override:
        if override not in WHEELS.values():
            print(f"D2LBN_MXNET_CUDA_WHEEL must be one of {sorted(WHEELS.values())}; got {override!r}",
                  file=sys.stderr)
            return 2
        wheel, how = override, "D2LBN_MXNET_CUDA_WHEEL"
    else:
        try:
            wheel, how = choose_wheel(cuda), "the newest build not above the driver's CUDA"
        except ValueError as err:
            print(f"GPU tier cannot run: {err}", file=sys.stderr)
            return 1
    print(f"GPU tier: {len(gpus)} GPU(s) ({', '.join(gpus)}); driver runs CUDA {cuda[0]}.{cuda[1]}; "
          f"wheel {wheel}=={MXNET_VERSION} ({how}).")
    venv = Path(args.venv)
    requirements = requirements_for(wheel, (ROOT / "requirements.txt").read_text())
    commands = plan(venv, wheel, args.pytest_args)
    stamp = venv / ".installed"
    up_to_date = stamp.is_file() and stamp.read_text() == stamp_text(wheel, requirements)
    build, test = ([] if up_to_date else commands[:-1]), commands[-1]
    # D2LBN_REQUIRE_GPU: nvidia-smi showed a GPU, so tests/gpu fails (not skips) if MXNet sees none
    test_env = {"PYTHONPATH": str(ROOT), "D2LBN_REQUIRE_GPU": "1"}
    if args.dry_run:
        print(f"Would {'reuse' if up_to_date else 'build'} {venv}; requirements:")
        print("".join(f"  {line}\n" for line in requirements.splitlines()), end="")
        for command in build:
            print("  $ " + " ".join(command))
        print("  $ " + " ".join(f"{k}={v}" for k, v in test_env.items()) + " " + " ".join(test))
        return 0
    if not up_to_date:
        stamp.unlink(missing_ok=True)
        subprocess.run(build[0], check=True)
        (venv / "requirements-gpu.txt").write_text(requirements)
        for command in build[1:]:
            subprocess.run(command, check=True)
        stamp.write_text(stamp_text(wheel, requirements))
    env = dict(os.environ, **test_env)
    return subprocess.run(test, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
