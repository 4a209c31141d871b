"""``config/bpsync.service`` checked by systemd itself, with bpsync installed the way the
unit documents (``pip install`` by the system's Python, no virtual environment).

systemd is not PID 1 on these machines, but Debian's ``systemd-analyze`` is there (the
test set-up installs it when missing: ``.ci/run``). bpsync's wheel is installed by pip
for the system interpreter into a scratch root (``pip install --root``: the paths of a
real install, the real system untouched), next to a copy of the host's unit
directory; ``systemd-analyze verify --root`` then checks the unit there, including that
``ExecStart`` names an executable. And the unit's ``ExecStart`` path must be where pip
puts the console script: the scripts directory of the system interpreter's default
install scheme (``/usr/local/bin`` on Debian).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "config" / "bpsync.service"
#: the interpreter ``pip install`` means in the unit's install notes
SYSTEM_PYTHON = "/usr/bin/python3"
#: where the host keeps its units (Debian: /lib is /usr/lib)
HOST_UNITS = Path("/usr/lib/systemd/system")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `apt-get install -y systemd` (.ci/run does it)")
    return path


def _exec_start() -> list[str]:
    lines = [
        line.split("=", 1)[1].split()
        for line in UNIT.read_text().splitlines()
        if line.startswith("ExecStart=")
    ]
    assert len(lines) == 1, lines
    return lines[0]


def _scripts_dir(python: str) -> Path:
    """Where pip puts console scripts for ``python`` (its default install scheme)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('scripts'))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return Path(out.stdout.strip())


@pytest.fixture(scope="module")
def system_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch root: the host's units, bpsync installed by pip for the system Python."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail(f"{SYSTEM_PYTHON} is missing: the unit documents a system-wide install")
    tmp = tmp_path_factory.mktemp("systemd")
    source = tmp / "src"  # a copy: a build in the work tree would leave build/ there
    for name in ("pyproject.toml", "README.md"):
        source.mkdir(exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    for name in ("sync", "migrations"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    # the system interpreter sees none of this test's paths (PYTHONPATH holds bpsync)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    wheels = tmp / "wheels"
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--quiet", "--wheel-dir", str(wheels), str(source)],
        check=True,
        timeout=300,
    )
    [wheel] = sorted(wheels.glob("bpsync-*.whl"))
    root = tmp / "root"
    subprocess.run(
        [
            *pip,
            "--python",
            SYSTEM_PYTHON,
            "install",
            "--root",
            str(root),
            "--no-deps",
            "--ignore-installed",
            "--no-warn-script-location",
            "--quiet",
            str(wheel),
        ],
        check=True,
        timeout=300,
        env={**env, "PIP_ROOT_USER_ACTION": "ignore"},
    )
    units = root / HOST_UNITS.relative_to("/")
    shutil.copytree(HOST_UNITS, units, symlinks=False, ignore_dangling_symlinks=True)
    target = root / "etc" / "systemd" / "system"
    target.mkdir(parents=True)
    shutil.copy2(UNIT, target / UNIT.name)
    return root


def test_exec_start_is_where_pip_puts_the_script(system_root: Path) -> None:
    command = _exec_start()
    assert command[1:] == ["run"]
    expected = _scripts_dir(SYSTEM_PYTHON) / "bpsync"
    assert command[0] == str(expected)
    installed = system_root / expected.relative_to("/")
    assert installed.is_file(), f"pip put no script at {expected}"
    assert os.access(installed, os.X_OK)
    shebang = installed.read_text().splitlines()[0]
    assert shebang.startswith("#!") and "python3" in shebang, shebang


def test_systemd_analyze_verify(system_root: Path) -> None:
    analyze = _tool("systemd-analyze")
    unit = system_root / "etc" / "systemd" / "system" / UNIT.name
    result = subprocess.run(
        [analyze, "verify", f"--root={system_root}", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, report
    assert report == "", report  # not even a warning


def test_systemd_analyze_verify_fails_without_the_script(system_root: Path, tmp_path: Path) -> None:
    """The check above can fail: the same root without bpsync's script is refused."""
    analyze = _tool("systemd-analyze")
    bare = tmp_path / "root"
    shutil.copytree(system_root / "etc", bare / "etc")
    shutil.copytree(system_root / "usr" / "lib" / "systemd", bare / "usr" / "lib" / "systemd")
    result = subprocess.run(
        [analyze, "verify", f"--root={bare}", str(bare / "etc/systemd/system" / UNIT.name)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "/usr/local/bin/bpsync is not executable" in result.stderr
