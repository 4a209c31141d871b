"""The CLI's error boundary in ``sync.cli.main.main``: exit codes pass through."""

from __future__ import annotations

import click
import pytest

from sync.cli import main as main_module


@click.command("exit-with")
@click.argument("code", type=int)
@click.pass_context
def _exit_with(ctx: click.Context, code: int) -> None:
    ctx.exit(code)


@pytest.fixture
def with_exit_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(main_module._COMMANDS, "exit-with", f"{__name__}:_exit_with")


@pytest.mark.usefixtures("with_exit_command")
@pytest.mark.parametrize("code", [0, 1, 3])
def test_ctx_exit_code_reaches_the_process(code: int) -> None:
    # click's standalone_mode=False returns ctx.exit's code; main() must pass it on
    # (``bpsync run --once`` exits 1 after a failed cycle through this path)
    with pytest.raises(SystemExit) as exc:
        main_module.main(["exit-with", str(code)])
    assert exc.value.code == code


def test_usage_error_is_exit_2_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main_module.main(["no-such-command"])
    assert exc.value.code == 2
    assert "No such command" in capsys.readouterr().err
