"""The machine row is defined once (``model.records.MachineRecord``): the store's columns,
the engine's writes and the per-cycle decoder derive from it.  These tests fail when they
drift apart."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudvac.model.records import (
    ENGINE_FIELDS,
    KEY_FIELDS,
    MACHINE_FIELDS,
    OPERATOR_FIELDS,
    VM_FIELDS,
    MachineRecord,
)
from cloudvac.model.redact import redact
from cloudvac.model.states import MachineState, ShutdownMessage
from cloudvac.store import tables
from cloudvac.store.tables import (
    ENGINE_COLUMNS,
    MACHINES,
    RECORD_COLUMNS,
    column_fields,
    engine_values,
    record_from_values,
)

STORE_ONLY = {"updated_at", "rev"}


def test_owners_partition_the_row() -> None:
    owners = [set(KEY_FIELDS), set(VM_FIELDS), set(ENGINE_FIELDS), set(OPERATOR_FIELDS)]
    assert set().union(*owners) == set(MACHINE_FIELDS)
    assert sum(len(o) for o in owners) == len(MACHINE_FIELDS)


def test_every_field_has_its_columns_and_no_column_is_unexplained() -> None:
    columns = {c.name for c in MACHINES.columns}
    stored = column_fields()
    assert set(stored) == columns - STORE_ONLY
    assert set(stored.values()) == set(MACHINE_FIELDS)
    assert [c.name for c in MACHINES.primary_key.columns] == list(KEY_FIELDS)


def test_engine_writes_never_touch_what_the_vm_owns() -> None:
    vm_columns = {c for c, f in column_fields().items() if f in VM_FIELDS}
    assert vm_columns == {"heartbeat_at", "shutdown_code", "shutdown_text", "shutdown_at",
                          "reported_at", "user_data_at"}
    assert not vm_columns & set(ENGINE_COLUMNS)
    assert set(ENGINE_COLUMNS) == set(ENGINE_FIELDS) | STORE_ONLY


def test_a_field_without_a_column_type_is_refused() -> None:
    with pytest.raises(TypeError, match="no column type"):
        tables._columns_of("extra", dict[str, str])


times = st.none() | st.floats(0, 2e9, allow_nan=False)
text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
               max_size=20)
records = st.builds(
    MachineRecord, space=st.just("a.example"), name=text.filter(bool),
    machinetype=text, state=st.sampled_from(MachineState), cloud_id=text,
    processors=st.integers(1, 512), hs06=times, created_at=times, started_at=times,
    stopped_at=times, heartbeat_at=times,
    shutdown=st.none() | st.builds(ShutdownMessage, st.integers(100, 799), text),
    shutdown_at=times, delete_requested_at=times, delete_reason=text, fault=text,
    adopted_at=times, missing_since=times,
    address=text)


@given(records)
def test_a_record_survives_the_row(record: MachineRecord) -> None:
    """Written by the engine and read back by position, every engine-owned field and the
    shutdown message come back as they were."""
    values = engine_values(record, 1234.0, 7)
    row = [values.get(column) for column in RECORD_COLUMNS]
    back = record_from_values(record.space, row)
    assert back == dataclasses.replace(
        record, heartbeat_at=None, shutdown_at=None if record.shutdown is None else 1234.0,
        fault=redact(record.fault))
    assert values["updated_at"] == 1234.0 and values["rev"] == 7


def test_the_decoder_follows_the_field_order() -> None:
    hints = typing.get_type_hints(MachineRecord)
    assert list(hints) == list(MACHINE_FIELDS)
    assert RECORD_COLUMNS[:3] == ("name", "machinetype", "state")
