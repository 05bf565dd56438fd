"""The installed console script, run as a user would."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


def _script() -> str:
    found = shutil.which("mae-large", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("the mae-large console script is not installed in this environment (pip install -e .)")
    return found


def test_help_runs_without_importing_torch() -> None:
    result = subprocess.run([_script(), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("inspect", "reconstruct", "loss"):
        assert command in result.stdout
    probe = subprocess.run([sys.executable, "-c", "import sys, cli.app; print('torch' in sys.modules)"],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert probe.stdout.strip() == "False"


def test_python_m_cli_and_error_exit(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "cli", "inspect", str(tmp_path / "none.pth")],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error:") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
