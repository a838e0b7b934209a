"""memguard as a released package: the wheel built from this checkout holds the library, its run-time data and the
``memguard`` command, and nothing of the repository around it; installed into a fresh virtual environment (no
dependencies: torch and the rest come from the environment running the tests) its command runs from any folder."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import memguard

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "memguard" / "miniature" / "model"
MODEL_XL = ROOT / "memguard" / "miniature" / "model_xl"  # the SDXL-shaped miniature
# What the WebUI loads from the extension folder, the repository's own tooling, and anything else: not in the wheel.
NOT_SHIPPED = ("tests/", "bench/", "scripts/", "javascript/", "requirements/", "docs/", "install.py", "style.css")


def _release_tree(dest: Path) -> Path:
    """The files a release is built from, copied to ``dest``: tracked and new files, not what git ignores (the
    virtual environments, outputs, caches), so the build never writes into the checkout."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout.decode()
        names = [n for n in listed.split("\0") if n]
    except (OSError, subprocess.SubprocessError):  # not a git checkout: everything but the usual generated folders
        skip = {".git", "out", "runs", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
        names = [
            p.relative_to(ROOT).as_posix()
            for p in ROOT.rglob("*")
            if p.is_file() and not any(part in skip or part.startswith(".venv") for part in p.relative_to(ROOT).parts)
        ]
    for name in names:
        source = ROOT / name
        if source.is_file():  # (a tracked file deleted in the working tree is listed too)
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout, built offline with the environment's own setuptools (no build isolation)."""
    import setuptools

    major = int(setuptools.__version__.split(".")[0])
    assert major >= 77, f"setuptools {setuptools.__version__} cannot build memguard (pyproject.toml needs 77+)"
    source = _release_tree(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out)]
    _run([*command, "."], cwd=source, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    (built,) = out.glob("memguard-*.whl")
    return built


def test_wheel_holds_the_library_its_data_and_the_command(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = f"memguard-{memguard.__version__}.dist-info"
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(f"{info}/entry_points.txt").decode())
        metadata = archive.read(f"{info}/METADATA").decode()
    assert wheel.name.startswith(f"memguard-{memguard.__version__}-py3-none-any")
    assert f"\nVersion: {memguard.__version__}\n" in metadata
    assert "\nLicense-Expression: MIT\n" in metadata and f"{info}/licenses/LICENSE" in names
    assert dict(entry_points["console_scripts"]) == {"memguard": "memguard.cli:main"}
    for model, least in ((MODEL, 50), (MODEL_XL, 50)):
        model_files = {p.relative_to(ROOT).as_posix() for p in model.rglob("*") if p.is_file()}
        assert len(model_files) > least and model_files <= names, sorted(model_files - names)
    assert {"memguard/data/benign_prompts.txt", "memguard/py.typed", "memguard/cli/__init__.py"} <= names
    assert not [n for n in names if n.startswith(NOT_SHIPPED) or "__pycache__" in n]
    assert {n.split("/")[0] for n in names} == {"memguard", info}


def test_installed_command_scans_the_bundled_miniature_from_anywhere(wheel, tmp_path):
    """``memguard --help`` and a real ``memguard scan`` (default model: the installed miniature, judged with the
    calibration shipped beside its weights) from a folder outside the checkout, on the installed files."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=dict(os.environ))
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env |= {"MEMGUARD_HOME": str(tmp_path / "home"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    # The environment's own packages (torch, diffusers, ...) after the venv's: a venv's --system-site-packages would
    # reach the base interpreter's, not those of the (virtual) environment running the tests.
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env)
    parents = [p for p in dict.fromkeys(site.getsitepackages()) if Path(p).is_dir()]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in parents)
    (Path(purelib.stdout.strip()) / "_memguard_test_parent.pth").write_text(lines, encoding="utf-8")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q"]
    _run([*pip, str(wheel)], cwd=tmp_path, env=env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    where = _run([str(python), "-c", "import memguard.miniature as m; print(m.__file__)"], elsewhere, env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout

    command = venv / "bin" / "memguard"
    help_text = _run([str(command), "--help"], elsewhere, env).stdout
    assert all(name in help_text for name in ("scan", "generate", "calibrate", "audit-data"))

    prompt = (MODEL / "prompts" / "memorized.txt").read_text(encoding="utf-8").splitlines()[0]
    (elsewhere / "prompts.txt").write_text(prompt + "\n", encoding="utf-8")
    store = tmp_path / "calibration.json"
    scan = _run([str(command), "scan", "--prompts", "prompts.txt", "--store", str(store)], elsewhere, env)
    (row,) = [json.loads(line) for line in scan.stdout.splitlines()]
    shipped = json.loads((MODEL / "memguard_calibration.json").read_text(encoding="utf-8"))["threshold"]
    assert row["prompt"] == prompt and row["threshold"] == pytest.approx(shipped)
    assert row["flagged"] is True and row["score"] > shipped, row
    assert "calibrating" not in scan.stderr and not store.exists(), scan.stderr
