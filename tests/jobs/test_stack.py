"""`python -m jobs.stack --check`: what image builds and site installs rely on to fail loudly."""
from __future__ import annotations

import subprocess
import sys

import transformers

from jobs import stack


def test_check_passes_on_this_stack() -> None:
    done = subprocess.run([sys.executable, "-m", "jobs.stack", "--check"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"transformers {transformers.__version__}" in done.stdout and done.stdout.rstrip().endswith("ok")


def test_check_names_transformers_that_does_not_see_torch(monkeypatch) -> None:
    # what transformers 5 does on DAS torch 2.4 ("Disabling PyTorch because PyTorch >= 2.6 is required")
    monkeypatch.setattr(transformers, "is_torch_available", lambda: False)
    problems = stack.check()
    assert len(problems) == 1
    assert f"transformers {transformers.__version__} does not see torch" in problems[0]
    assert "docker/lock/dcu-py310.txt" in problems[0]


def test_check_names_a_library_that_does_not_import(monkeypatch) -> None:
    real = stack.importlib.import_module

    def broken(name: str, package: str | None = None):
        if name == "deepspeed":
            raise ImportError("cannot import name '_get_socket_with_port'")
        return real(name, package)

    monkeypatch.setattr(stack.importlib, "import_module", broken)
    (problem,) = stack.check()
    assert problem.startswith("deepspeed ") and "_get_socket_with_port" in problem


ROOT = stack.Path(__file__).resolve().parents[2]


def test_site_install_refuses_an_env_without_the_sites_torch(tmp_path) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "env")], check=True, timeout=120)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "install-site.sh")], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": str(tmp_path / "env" / "bin" / "python")})
    assert done.returncode == 1
    assert "torch does not import" in done.stderr and "module load compiler/dtk" in done.stderr


def test_held_packages_catch_a_changed_platform_package(tmp_path) -> None:
    script = [sys.executable, str(ROOT / "docker" / "scripts" / "held_packages.py")]
    held = tmp_path / "held.txt"
    subprocess.run([*script, "record", str(held)], check=True, timeout=60)
    recorded = held.read_text()
    assert recorded.startswith("torch==")
    assert subprocess.run([*script, "compare", str(held)], timeout=60).returncode == 0
    held.write_text(recorded.replace("torch==", "torch==0.0.1+das-", 1))
    done = subprocess.run([*script, "compare", str(held)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "torch 0.0.1+das-" in done.stderr
