"""The container image and the systemd unit, checked without Docker or systemd.

No Docker engine runs here, so the Dockerfile is parsed and its build and install
commands are replayed: the builder stage's ``COPY`` lines into a temporary build
context, its ``pip wheel`` (``--no-deps``: the dependencies are this venv's), the
runtime stage's ``pip install`` into a fresh venv; then the installed ``bpsync`` must
answer ``--help`` and the ``HEALTHCHECK`` command must pass against a running health
server (and fail when nothing listens).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sync.clock import SystemClock
from sync.metrics import Metrics
from sync.runtime.health import HealthState
from sync.runtime.server import start_http_server
from sync.settings import BigPandaSettings, ServiceNowSettings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
UNIT = ROOT / "config" / "bpsync.service"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for args in self.all("ENV"):
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                out[key] = value
        return out


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARGs, stages) from a Dockerfile; continuation lines joined."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = " ".join(rest.split()) if keyword not in ("RUN", "HEALTHCHECK") else rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, base))
        elif not stages:
            assert keyword == "ARG", line
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    _, parsed = parse_dockerfile(DOCKERFILE.read_text())
    return {stage.name: stage for stage in parsed}


def test_dockerfile_shape(stages: dict[str, Stage]) -> None:
    assert list(stages) == ["builder", "runtime"]
    assert all(s.base == "python:3.11-slim" for s in stages.values())
    runtime = stages["runtime"]
    env = runtime.env()
    assert env["BPSYNC_STATE_DIR"] == "/var/lib/bpsync"
    assert env["BPSYNC_HTTP_HOST"] == "0.0.0.0"
    assert runtime.all("VOLUME") == ['["/var/lib/bpsync"]']
    assert runtime.all("EXPOSE") == [env["BPSYNC_HTTP_PORT"]]
    user = runtime.all("USER")
    assert user
    assert user[-1].split(":")[0] not in ("root", "0")
    assert json.loads(runtime.all("ENTRYPOINT")[-1]) == ["bpsync"]
    assert json.loads(runtime.all("CMD")[-1]) == ["run"]
    assert any(args.startswith("--from=builder") for args in runtime.all("COPY"))
    healthcheck = runtime.all("HEALTHCHECK")[-1]
    assert "curl" not in healthcheck
    assert "/healthz" in healthcheck


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in ("pyproject.toml", "README.md", "sync", "migrations"):
        assert needed not in patterns
    for dropped in (".venv", ".git", "var", "tests", ".env"):
        assert dropped in patterns


def _pip_command(stage: Stage, verb: str) -> list[str]:
    for args in stage.all("RUN"):
        for part in args.split("&&"):
            tokens = shlex.split(part)
            if tokens[:2] == ["pip", verb]:
                return tokens[2:]
    raise AssertionError(f"no `pip {verb}` RUN in stage {stage.name}")


def _healthcheck_argv(stage: Stage) -> list[str]:
    text = stage.all("HEALTHCHECK")[-1]
    _, _, cmd = text.partition("CMD ")
    argv = json.loads(cmd)
    assert isinstance(argv, list)
    return [str(a) for a in argv]


@pytest.fixture(scope="module")
def installed(stages: dict[str, Stage], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with bpsync installed the way the Dockerfile does; its bin dir."""
    tmp = tmp_path_factory.mktemp("image")
    context = tmp / "src"
    context.mkdir()
    builder, runtime = stages["builder"], stages["runtime"]
    for args in builder.all("COPY"):  # replay COPY into the build context
        *sources, dest = args.split()
        for source in sources:
            src = ROOT / source
            target = context / dest if dest not in ("./", ".") else context / source
            if src.is_dir():
                shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
    wheels = tmp / "wheels"
    wheel_args = _pip_command(builder, "wheel")
    wheel_args = [str(wheels) if a == "/wheels" else a for a in wheel_args]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--quiet", *wheel_args],
        cwd=context,
        check=True,
        timeout=120,
    )
    built = sorted(wheels.glob("bpsync-*.whl"))
    assert len(built) == 1, built

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    install_args = _pip_command(runtime, "install")
    install_args = [str(wheels) if a == "/wheels" else a for a in install_args]
    subprocess.run(
        [
            *pip,
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "--quiet",
            *install_args,
        ],
        cwd=tmp,
        check=True,
        timeout=120,
    )
    # the dependencies come from this test venv: a .pth line adds its site-packages after
    # the venv's own (its .pth files, the editable bpsync among them, are not processed);
    # written after the install, or pip would find bpsync "already satisfied" there
    purelib = Path(sysconfig.get_paths()["purelib"])
    venv_purelib = next((venv / "lib").glob("python3*/site-packages"))
    assert (venv_purelib / "sync" / "__init__.py").is_file()
    (venv_purelib / "zz_test_dependencies.pth").write_text(f"{purelib}\n")
    return venv / "bin"


@pytest.mark.slow
def test_installed_bpsync_runs(installed: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPSYNC_")}
    result = subprocess.run(
        [str(installed / "bpsync"), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "run" in result.stdout
    assert "config" in result.stdout
    where = subprocess.run(
        [str(installed / "python"), "-c", "import sync, migrations; print(sync.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
        timeout=60,
    )
    assert where.stdout.strip().startswith(str(installed.parent)), where.stdout
    run_help = subprocess.run(
        [str(installed / "bpsync"), "run", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert run_help.returncode == 0, run_help.stderr


@pytest.mark.slow
async def test_healthcheck_command_against_a_running_server(
    installed: Path, stages: dict[str, Stage], tmp_path: Path
) -> None:
    argv = _healthcheck_argv(stages["runtime"])
    assert argv[0] == "python"
    argv[0] = str(installed / "python")

    async def ping() -> None:
        return None

    server = await start_http_server(
        "127.0.0.1",
        0,
        health=HealthState(SystemClock(), 15),
        metrics=Metrics(),
        db_ping=ping,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPSYNC_")}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, env={**env, "BPSYNC_HTTP_PORT": str(server.port)}, cwd=tmp_path
        )
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        await server.close()
    # nothing listens any more: the check fails
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env={**env, "BPSYNC_HTTP_PORT": str(server.port)},
        cwd=tmp_path,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert await asyncio.wait_for(proc.wait(), 30) != 0


# --------------------------------------------------------------------------- systemd unit


def _unit() -> dict[str, list[str]]:
    """``Section.Key`` -> values (a key may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def test_systemd_unit() -> None:
    unit = _unit()
    service = {k.removeprefix("Service."): v for k, v in unit.items() if k.startswith("Service.")}
    assert service["Type"] == ["notify"]
    assert service["ExecStart"] == ["/usr/local/bin/bpsync run"]
    assert service["Restart"] == ["on-failure"]
    assert service["StateDirectory"] == ["bpsync"]
    assert int(service["WatchdogSec"][0].rstrip("s")) > 0
    assert "yes" in service.get("DynamicUser", []) or service.get("User")
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert service[key] == ["yes"], key
    assert service["ProtectSystem"] == ["strict"]
    assert unit["Install.WantedBy"] == ["multi-user.target"]

    env = dict(v.split("=", 1) for v in service["Environment"])
    credentials = {v.split(":", 1)[0] for v in service["LoadCredential"]}
    secret_files = {k: v for k, v in env.items() if k.endswith("_FILE")}
    assert secret_files, "secrets come from LoadCredential via *_FILE settings"
    known = {
        f"BPSYNC_SERVICENOW__{name.upper()}_FILE" for name in ServiceNowSettings._secret_fields
    } | {f"BPSYNC_BIGPANDA__{name.upper()}_FILE" for name in BigPandaSettings._secret_fields}
    for name, value in secret_files.items():
        assert name in known, f"{name} is not a secret setting"
        assert value.startswith("%d/"), value
        assert value.removeprefix("%d/") in credentials, f"{value} is not a LoadCredential"
    assert "BPSYNC_SERVICENOW__PASSWORD_FILE" in secret_files
