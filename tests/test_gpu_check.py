"""The GPU check's dry run (bench/gpu_check.py --dry-run): the one prepared command, on the CPU with
tiny sizes, so that it cannot rot while no GPU runs it. It installs afd and a made-up wheel into a
throwaway venv from a packed wheel folder, offline, runs the gpu tests (which skip here), takes the
figures on a tiny model and writes the report; only CUDA is left out."""

import base64
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile

import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import gpu_check  # noqa: E402


def make_wheel(folder, name="afd_gpu_probe", version="0.1"):
    """A minimal pure-python wheel: module NAME with VALUE = 42."""
    dist = f"{name}-{version}"
    files = {f"{name}.py": b"VALUE = 42\n",
             f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    digest = {p: base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b"=").decode() for p, d in files.items()}
    files[f"{dist}.dist-info/RECORD"] = ("".join(f"{p},sha256={digest[p]},{len(d)}\n" for p, d in files.items())
                                         + f"{dist}.dist-info/RECORD,,\n").encode()
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for p, d in files.items():
            z.writestr(p, d)
    return path


def test_a_packed_wheel_unpacks_to_the_same_files_stored(tmp_path):
    wheel = make_wheel(tmp_path)
    folder, out = tmp_path / "folder", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    assert gpu_check.pack(wheel, folder).name == wheel.name + ".xz"
    assert gpu_check.unpack(folder, out) == [wheel.name]
    with zipfile.ZipFile(wheel) as a, zipfile.ZipFile(out / wheel.name) as b:
        assert a.namelist() == b.namelist() and all(a.read(n) == b.read(n) for n in a.namelist())
        assert {i.compress_type for i in b.infolist()} == {zipfile.ZIP_STORED}  # what xz then compresses


def test_the_pins_are_exact_and_cover_afds_dependencies():
    """Every wheel is pinned to one version; afd's dependencies are each pinned or on the GPU machine
    (so a dependency added to pyproject.toml without a wheel fails here, not on the GPU)."""
    pins = {}
    for line in gpu_check.PINS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version and "," not in version and "*" not in version, line
            pins[name.lower()] = version
    assert "trl" in pins and not set(gpu_check.HELD) & set(pins)  # torch and transformers never travel
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower() for d in deps}
    assert names <= set(pins) | {n.lower() for n in gpu_check.ON_THE_MACHINE}, names - set(pins)


def test_gpu_names_give_the_report_file():
    assert gpu_check.slug({"gpu": "NVIDIA H100 80GB HBM3"}, False) == "gpu-h100"
    assert gpu_check.slug({"gpu": "NVIDIA H200"}, False) == "gpu-h200"
    assert gpu_check.slug({}, True) == "gpu-dry-run"
    assert sum(gpu_check.LIMITS_S.values()) < gpu_check.BUDGET_S <= 8 * 60


def test_dry_run_installs_offline_runs_the_gpu_tests_and_writes_the_report(tmp_path):
    # a throwaway venv that sees this environment's packages (as the GPU machine has its own)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / site).joinpath("outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    folder = tmp_path / "wheels"
    folder.mkdir()
    gpu_check.pack(make_wheel(tmp_path), folder)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run", "--python", python,
                           "--wheels", str(folder), "--out", str(out), "--extra", "afd-gpu-probe", "pytest"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=400,
                          env={k: v for k, v in os.environ.items() if k != "AFD_GPU_TESTS_ON_CPU"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu-dry-run.json").read_text())
    assert gpu_check.check_report(report) == []

    install = report["steps"]["install"]
    assert sorted(install["installed"]) == ["afd-0.1.0", "afd-gpu-probe-0.1"]  # nothing the venv already had
    assert install["held"]["torch"] == torch.__version__
    imported = subprocess.run([python, "-c", "import afd, afd_gpu_probe; print(afd_gpu_probe.VALUE, afd.__file__)"],
                              cwd=tmp_path, capture_output=True, text=True)
    assert imported.stdout.split() == ["42", str(REPO / "afd" / "__init__.py")], imported.stderr  # editable

    tests = report["steps"]["tests"]
    assert len(tests["outcomes"]) >= 10 and set(tests["outcomes"].values()) == {"SKIPPED"}  # no CUDA here
    assert all(t.startswith("test_gpu.py::") for t in tests["outcomes"]) and tests["facts"] == []

    figs = report["figures"]
    assert figs["model"]["shape"] == "tiny-random" and figs["sampler"]["workload"]["k"] == 2
    assert {a["tokens"] for a in figs["sampler"]["arms"]} == {2 * 2 * 4}  # prompts x K x T, EOS ignored
    assert [s["precision"] for s in figs["sft"]] == ["fp32", "fp32"] and all(s["steps"] == 2 for s in figs["sft"])
    md = (out / "gpu-dry-run.md").read_text()
    assert "| install | yes |" in md and "| afd HFEngine | bf16 |" in md and "| auto | fp32 |" in md
    assert "[gpu-check] wrote" in done.stdout

    broken = {**report, "figures": {**figs, "sampler": {"arms": figs["sampler"]["arms"][:2]}}}
    assert gpu_check.check_report(broken) == ["figures.sampler.arms are not afd and generate, each in fp32 and bf16"]


def test_install_says_what_is_missing(tmp_path):
    log = tmp_path / "install.log"
    r = gpu_check.install(sys.executable, tmp_path / "nowhere", [], log, 30)
    assert not r["ok"] and r["detail"].startswith(f"wheel folder {tmp_path / 'nowhere'} does not exist")
