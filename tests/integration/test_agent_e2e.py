"""The in-VM agent as a real subprocess against the real web service."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from cloudvac.context.userdata import ContextRenderer
from cloudvac.model.states import ShutdownMessage
from tests.integration.webserver import SPACE, web_server

AGENT = Path(__file__).parents[2] / "cloudvac" / "context" / "agent.py"
A = "cloudvac-aaaaaa-belle-aaaaaaaaaa"
B = "cloudvac-aaaaaa-belle-bbbbbbbbbb"


def run_agent(tmp_path: Path, config: dict[str, object], pilot: str) -> tuple[int, str]:
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    result = subprocess.run([sys.executable, str(AGENT), "--config", str(path), "--",
                             sys.executable, "-c", pilot],
                            capture_output=True, text=True, timeout=60)
    return result.returncode, result.stderr


def test_agent_reports_through_real_endpoints(tmp_path: Path) -> None:
    with web_server(tmp_path / "state") as web:
        web.add_machine(A)
        renderer = ContextRenderer(web.settings.model_copy(update={"web_url": web.url}),
                                   web.signer)
        config = renderer.agent_config(web.space, web.space.machinetypes["belle"], A)
        log = tmp_path / "pilot.log"
        marker = tmp_path / "powered-off"
        config.update(heartbeat_period_seconds=0.2, logs=[str(log)],
                      poweroff_command=["touch", str(marker)], features_dir=str(tmp_path / "run"))
        # The features as DIRAC reads them: urlopen(os.path.join($JOBFEATURES, key)).
        seen = tmp_path / "seen.json"
        pilot = (f"import json, os, time; from urllib.request import urlopen\n"
                 f"open({str(log)!r}, 'w').write('JobAgent done\\n')\n"
                 f"json.dump({{k: urlopen(os.path.join(os.environ[v], k)).read().decode()\n"
                 f"           for v, k in [('MACHINEFEATURES', 'total_cpu'),\n"
                 f"                        ('JOBFEATURES', 'allocated_cpu'),\n"
                 f"                        ('JOBFEATURES', 'wall_limit_secs'),\n"
                 f"                        ('JOBFEATURES', 'max_rss_bytes')]}},\n"
                 f"          open({str(seen)!r}, 'w'))\n"
                 "time.sleep(1.0)")
        code, stderr = run_agent(tmp_path, config, pilot)
        assert code == 0, stderr
        assert marker.exists()
        assert config["token"] not in stderr
        assert seen.exists(), stderr
        mt = web.space.machinetypes["belle"]
        processors = web.store.machine(SPACE, A).processors  # type: ignore[union-attr]
        assert json.loads(seen.read_text()) == {
            "total_cpu": f"{processors}\n", "allocated_cpu": f"{processors}\n",
            "wall_limit_secs": f"{mt.max_wallclock_seconds}\n",
            "max_rss_bytes": f"{mt.mb_per_processor * processors * 1024 * 1024}\n"}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            record = web.store.machine(SPACE, A)
            if record is not None and record.heartbeat_at is not None:
                break
            time.sleep(0.1)
        record = web.store.machine(SPACE, A)
        assert record is not None and record.heartbeat_at is not None
        assert record.shutdown == ShutdownMessage(200, "Success")
        assert (web.joboutput(A, "pilot.log") or b"").decode() == "JobAgent done\n"


def test_agent_with_another_machines_url_writes_nothing_and_still_powers_off(
        tmp_path: Path) -> None:
    with web_server(tmp_path / "state") as web:
        web.add_machine(A)
        web.add_machine(B)
        marker = tmp_path / "powered-off"
        config = {"joboutputs_url": f"{web.url}/machines/{SPACE}/{B}/joboutputs",
                  "token": web.token(A), "heartbeat_period_seconds": 0.2,
                  "poweroff_command": ["touch", str(marker)], "final_upload_seconds": 5}
        code, stderr = run_agent(tmp_path, config, "import sys; sys.exit(3)")
        assert code == 0 and marker.exists()
        assert "403" in stderr
        assert web.store.joboutput_files(SPACE, B) == []
        record = web.store.machine(SPACE, B)
        assert record is not None and record.shutdown is None and record.heartbeat_at is None


def test_agent_ends_a_vm_the_manager_does_not_know(tmp_path: Path) -> None:
    """A machine the manager has no row for (lost database, pruned row) is answered 404: no
    answer to the agent, which ends the VM once ``unreachable_poweroff_seconds`` passed."""
    with web_server(tmp_path / "state") as web:
        renderer = ContextRenderer(web.settings.model_copy(update={"web_url": web.url}),
                                   web.signer)
        config = renderer.agent_config(web.space, web.space.machinetypes["belle"], A)
        now = time.time()  # rendered: max_wallclock_seconds (7200) + the default grace (3600)
        assert now + 7200 < config["deadline"] <= now + 7200 + 3600 + 1
        marker = tmp_path / "powered-off"
        config.update(heartbeat_period_seconds=0.2, unreachable_poweroff_seconds=1.5,
                      final_upload_seconds=2, poweroff_command=["touch", str(marker)],
                      features_dir=str(tmp_path / "run"))
        started = time.monotonic()
        code, stderr = run_agent(tmp_path, config, "import time; time.sleep(120)")
        assert code == 0 and marker.exists(), stderr
        assert time.monotonic() - started > 1.5
        assert "HTTP 404 no such machine" in stderr and "sent SIGTERM to pilot" in stderr
        assert "shutdown_message: 700 Manager unreachable" in stderr
        assert web.store.machine(SPACE, A) is None
