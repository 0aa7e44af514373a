"""/healthz of the operator door (Nagios-usable: first line OK/WARNING/CRITICAL, 503 unless
OK) flipping when a space stalls and when a credential nears expiry; the operator endpoints
refuse a VM's token and anyone without the operator's token.  Served for real on 127.0.0.1
(tests/integration/webserver.py), the engine's own metrics on the shared registry."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from cloudvac.demo import example_dir
from cloudvac.engine import metrics as engine_metrics
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.web import health
from tests.integration.demo_process import running_demo
from tests.integration.webserver import SPACE, web_server

# Demo subprocesses and a browser: loaded CI machines run them 3x slower.
pytestmark = pytest.mark.timeout(900)

TOKEN = "operator-health-canary-5b1e7c9d"
OPERATOR_PATHS = ("/", "/dashboard", "/api/status", "/status", "/metrics", "/healthz")


def healthz(url: str) -> tuple[int, list[str]]:
    answer = httpx.get(url + "/healthz", timeout=60)
    return answer.status_code, answer.text.splitlines()


def test_the_web_reads_the_gauges_the_engine_writes() -> None:
    assert health.LAST_CYCLE == engine_metrics.LAST_CYCLE
    assert health.ENGINE_STARTED == engine_metrics.ENGINE_STARTED


def test_healthz_flips_when_a_space_stalls(tmp_path: Path) -> None:
    with web_server(tmp_path / "state", cycle_seconds=60) as web:
        code, lines = healthz(web.operator_url)
        assert code == 200 and lines[0].startswith("OK"), lines
        assert "cycles not checked" in lines[-1]  # no engine in this process yet
        now = time.time()
        metrics = EngineMetrics(web.context.registry, clock=lambda: now - 100)
        code, lines = healthz(web.operator_url)  # started 100s ago: within 3 periods
        assert code == 200 and lines[0].startswith("OK"), lines
        metrics.engine_started.set(now - 200)  # no cycle since the start, 3 periods ago
        code, lines = healthz(web.operator_url)
        assert code == 503 and lines[0].startswith(f"CRITICAL: space {SPACE}: no "
                                                   "successful cycle"), lines
        metrics.cycle_done(SPACE, time.time())
        assert healthz(web.operator_url)[0] == 200
        metrics.cycle_done(SPACE, time.time() - 181)  # its last cycle: > 3 x 60s ago
        code, lines = healthz(web.operator_url)
        assert code == 503 and lines[0].startswith("CRITICAL") and SPACE in lines[0], lines
        assert "its last successful cycle" in lines[0]


def test_healthz_flips_when_a_real_cloud_hangs(tmp_path: Path) -> None:
    """The demo with one simulated cloud that never answers: its cycles time out
    (space_timeout_seconds) and never complete; the other space's do."""
    state = tmp_path / "state"
    config = state / "cloudvac.d"  # the demo copies its example only if this is absent
    shutil.copytree(example_dir(), config)
    hung = config / "20-sim-b.conf"
    text = re.sub(r"(?m)^sim_api_latency_seconds *=.*$", "", hung.read_text())
    hung.write_text(text.replace("[space sim-b.example]",
                                 "[space sim-b.example]\nsim_api_latency_seconds = 3600", 1))
    with running_demo(state) as demo:
        deadline = time.monotonic() + 240
        code, lines = healthz(demo.operator_url)
        while code == 200:
            assert time.monotonic() < deadline, lines
            time.sleep(1)
            code, lines = healthz(demo.operator_url)
        assert code == 503 and lines[0].startswith("CRITICAL: space sim-b.example: no "
                                                   "successful cycle"), lines
        assert not any("sim-a.example" in line for line in lines), lines


def test_healthz_flips_when_a_credential_nears_expiry(tmp_path: Path) -> None:
    with web_server(tmp_path / "state") as web:
        now = time.time()
        web.store.set_credentials(SPACE, {"checkin": now + 3 * 86400}, now)
        assert healthz(web.operator_url)[0] == 200
        web.store.set_credentials(SPACE, {"checkin": now + 3600}, now)
        code, lines = healthz(web.operator_url)
        assert code == 503 and lines[0].startswith(f"WARNING: space {SPACE}: checkin "
                                                   "credential expires in"), lines
        web.store.set_credentials(SPACE, {"checkin": now - 60}, now)
        code, lines = healthz(web.operator_url)
        assert code == 503 and lines[0].startswith("CRITICAL") and "expired" in lines[0]
        page = httpx.get(web.operator_url + "/dashboard", timeout=60).text
        assert 'class="critical"' in page and "checkin" in page


def test_operator_endpoints_refuse_a_vm_token_and_no_token(tmp_path: Path) -> None:
    token = tmp_path / "operator.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    with web_server(tmp_path / "state", operator_token_file=token) as web:
        web.add_machine("cloudvac-vm-1")
        vm = {"Authorization": f"Bearer {web.token('cloudvac-vm-1')}"}
        operator = {"Authorization": f"Bearer {TOKEN}"}
        for path in OPERATOR_PATHS:
            url = web.operator_url + path
            assert httpx.get(url, timeout=60).status_code == 401, path
            assert httpx.get(url, headers=vm, timeout=60).status_code == 401, path
            assert httpx.get(url, headers=operator, timeout=60).status_code == 200, path
            if path != "/healthz":  # the VMs' door has a bare liveness /healthz of its own
                assert httpx.get(web.url + path, headers=vm, timeout=60).status_code == 404
        page = httpx.get(web.operator_url + "/dashboard", headers=operator, timeout=60)
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "<script" not in page.text  # and it loads nothing from anywhere:
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)
