import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def shared_dir(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent: the real trained models and photos live in ../shared beside the project")
    return path


@pytest.fixture(scope="session")
def shared_models() -> Path:
    return shared_dir("models")


@pytest.fixture(scope="session")
def shared_images() -> list[Path]:
    folder = shared_dir("images")
    return sorted(p for p in folder.iterdir() if p.suffix in (".png", ".jpg"))


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    """One output folder for the session, so tests share generated models and builds."""
    return tmp_path_factory.mktemp("dist")


def run_cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run one of the project's command lines as a user would, from the project root."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def assert_clean_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """Exit code 2, one 'error:' message naming the problem, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    for word in words:
        assert word.lower() in result.stderr.lower(), (word, result.stderr)
