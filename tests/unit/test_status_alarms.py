"""``/metrics`` reads a machinetype's backoff and its space's credential expiry through
``status.alarms``, without the machines; ``cloudvac status`` shows the same figures."""

from __future__ import annotations

from cloudvac.config import load_config_dir
from cloudvac.demo import example_dir
from cloudvac.model.records import MachineRecord
from cloudvac.model.states import MachineState
from cloudvac.status import StoreView, alarms, status_rows

NOW = 1_800_000_000.0


def test_alarms_are_the_status_rows_figures_without_reading_machines() -> None:
    loaded = load_config_dir(example_dir())
    assert not loaded.issues
    space = sorted(loaded.spaces)[0]
    belle = loaded.spaces[space].machinetypes["belle"]
    aborts = {(space, "belle"): NOW - belle.backoff_seconds / 2}
    credentials = {space: {"keystone": NOW + 3600.0, "checkin": NOW + 60.0}}
    machine = MachineRecord(space=space, machinetype="belle", name="m1",
                            state=MachineState.RUNNING, processors=1, created_at=NOW - 100)
    view = StoreView(machines=[machine], last_aborts=aborts, events=[],
                     credentials=credentials)
    found = {(a.space, a.machinetype): a for a in alarms(loaded.spaces, aborts, credentials,
                                                         NOW)}
    rows = status_rows(loaded.spaces, view, NOW)
    assert {(r.space, r.machinetype) for r in rows} == set(found)
    for row in rows:
        alarm = found[(row.space, row.machinetype)]
        assert (row.backoff_seconds_left, row.credential_expires_in) == \
            (alarm.backoff_seconds_left, alarm.credential_expires_in)
    assert found[(space, "belle")].backoff_seconds_left == belle.backoff_seconds / 2 > 0
    assert found[(space, "belle")].credential_expires_in == 60.0
    others = [a for a in found.values() if a.space != space]
    assert others and all(a.backoff_seconds_left == 0.0 and a.credential_expires_in is None
                          for a in others)
    assert next(r for r in rows if (r.space, r.machinetype) == (space, "belle")).running == 1
