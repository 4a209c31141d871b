"""BPQL for the emulator: :mod:`sync.bpql` over the emulator's incidents."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sync.bpql import compile_bpql as _compile
from sync.emulators.bigpanda.model import Incident

if TYPE_CHECKING:
    from sync.emulators.bigpanda.state import State

Predicate = Callable[[Incident, "State"], bool]


def compile_bpql(query: str | None) -> Predicate:
    """:func:`sync.bpql.compile_bpql` for an emulated incident (its fields as
    :meth:`State.field_values` gives them). Raises ValueError."""
    predicate = _compile(query)
    return lambda inc, st: predicate(lambda name: st.field_values(inc, name))
