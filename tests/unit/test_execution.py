"""Which queued pair a cycle still executes (:func:`sync.execution.runs_after`)."""

from __future__ import annotations

import pytest

from sync.execution import runs_after


@pytest.mark.parametrize(
    ("paid", "stopping", "past_deadline", "runs"),
    [
        (False, False, False, True),  # within the budget: everything runs
        (True, False, False, True),
        (True, False, True, True),  # budget spent: a page already read is sent
        (False, False, True, False),  # budget spent: unpaid work waits
        (True, True, False, False),  # a stop or an error: nothing new starts
        (False, True, False, False),
        (True, True, True, False),
    ],
)
def test_the_budget_stops_reads_and_a_stop_stops_everything(
    paid: bool, stopping: bool, past_deadline: bool, runs: bool
) -> None:
    assert runs_after(paid=paid, stopping=stopping, past_deadline=past_deadline) is runs
