"""Fixtures for contract tests against REAL servers started locally on 127.0.0.1.

The OpenStack oracles (real Nova, real Keystone) run from .venv-oracle, built by
``bash tests/oracle/setup.sh``. Without it these tests FAIL with that instruction, unless
CLOUDVAC_SKIP_ORACLE=1 is set (then they are skipped).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_LAUNCH = Path(__file__).resolve().parents[1] / "oracle" / "launch.py"


def _load_launch() -> Any:
    name = "cloudvac_oracle_launch"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _LAUNCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


launch = _load_launch()

# -- timeouts (pytest-timeout; the global one is in pyproject.toml) ------------------------
# What it costs to start an oracle on a quiet 2-core machine, in seconds (wall-clock time is
# about the server's CPU time there; launch.Timeouts bounds each start-up by that CPU time).
KEYSTONE_START_S = 15.0
NOVA_START_S = 5.0
# The contract tests must hold on a machine this many times slower than a quiet one (a
# shared CI machine under load).
SLOWDOWN = 5.0


def budget(quiet_s: float) -> pytest.MarkDecorator:
    """The timeout of a contract test whose body waits ``quiet_s`` on a quiet machine (the
    servers it starts itself, the daemon runs it drives): ``SLOWDOWN`` times that. As for
    every contract test, fixture set-up is not counted (see pytest_collection_modifyitems)."""
    return pytest.mark.timeout(SLOWDOWN * quiet_s, func_only=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Contract tests are timed on their body only (``func_only``): a session oracle starts in
    whichever test happens to need it first, and launch.py bounds every start-up by the
    server's own progress (and every stop). Bodies keep the global timeout unless marked
    with their own (:func:`budget`). Items of other directories are left alone."""
    here = Path(__file__).resolve().parent
    for item in items:
        if item.path.is_relative_to(here) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(func_only=True))

# The shim-mode Nova used by most smoke tests: a page holds at most 2 servers, so 3 servers
# already need pagination; 6 cores, so an 8-vCPU flavor (m1.xlarge) is over quota.
SHIM_QUOTA_CORES = 6
SHIM_QUOTA_INSTANCES = 10
SHIM_MAX_LIMIT = 2


@pytest.fixture(scope="session")
def oracle_ready() -> None:
    """Fail (or skip with CLOUDVAC_SKIP_ORACLE=1) when the oracle venv or the SDK is missing."""
    problems = []
    if not launch.oracle_available():
        problems.append(
            f"real-OpenStack oracle not installed at {launch.ORACLE_VENV}: {launch.SETUP_HINT}"
        )
    if importlib.util.find_spec("openstack") is None:
        problems.append(
            "openstacksdk missing in cloudvac's venv: "
            f"{sys.executable} -m pip install 'openstacksdk>=4.0'"
        )
    if not problems:
        return
    if os.environ.get("CLOUDVAC_SKIP_ORACLE") == "1":
        pytest.skip("CLOUDVAC_SKIP_ORACLE=1: " + "; ".join(problems))
    pytest.fail(
        "; ".join(problems) + "  (or set CLOUDVAC_SKIP_ORACLE=1 to skip these tests)", pytrace=False
    )


@pytest.fixture(scope="session")
def nova_shim(oracle_ready: None) -> Iterator[Any]:
    """Real Nova with the built-in Keystone token shim."""
    t0 = time.monotonic()
    with launch.nova_oracle(
        launch.NovaOptions(
            quota_cores=SHIM_QUOTA_CORES,
            quota_instances=SHIM_QUOTA_INSTANCES,
            max_limit=SHIM_MAX_LIMIT,
        )
    ) as nova:
        nova.data["fixture_start_s"] = round(time.monotonic() - t0, 2)
        yield nova


@pytest.fixture(scope="session")
def keystone(oracle_ready: None) -> Iterator[Any]:
    """Real Keystone (with a compute endpoint reserved for ``nova_keystone``)."""
    with launch.keystone_oracle() as ks:
        yield ks


@pytest.fixture(scope="session")
def nova_keystone(keystone: Any) -> Iterator[Any]:
    """A second real Nova that validates tokens against the real Keystone."""
    with launch.nova_oracle(keystone=keystone) as nova:
        yield nova


def connect(info: Any, **overrides: Any) -> Any:
    """openstacksdk Connection for an oracle, ignoring clouds.yaml and OS_* variables."""
    import openstack

    kwargs = {**info.connect_kwargs(), **overrides}
    return openstack.connect(load_yaml_config=False, load_envvars=False, **kwargs)


@pytest.fixture(scope="session")
def shim_conn(nova_shim: Any) -> Iterator[Any]:
    conn = connect(nova_shim)
    yield conn
    conn.close()


# -- EGI Check-in style federation (test_federation_oracle.py) ------------------------------


@pytest.fixture(scope="session")
def oidc_provider(oracle_ready: None) -> Iterator[Any]:
    """Local OIDC provider (``launch.OidcOracle``): refresh tokens + revocation, and the
    client-credentials service account ``cloudvac-sa`` entitled to ``vo.example.eu``.
    A test that stops/pauses/reconfigures it must restore it (``op.start()``/``resume()``/
    ``configure(access_token_lifetime=3600)``) before it returns."""
    t0 = time.monotonic()
    with launch.oidc_oracle() as op:
        op.info.data["fixture_start_s"] = round(time.monotonic() - t0, 2)
        yield op


@pytest.fixture(scope="session")
def keystone_federation(oidc_provider: Any) -> Iterator[Any]:
    """Real Keystone with OIDC federation (IdP ``egi.eu`` trusting ``oidc_provider``,
    protocols ``openid`` and ``oidc``, VO project ``vo.example.eu``) and a compute endpoint
    reserved for ``nova_federation``."""
    t0 = time.monotonic()
    with launch.keystone_oracle(oidc=oidc_provider) as ks:
        ks.data["fixture_start_s"] = round(time.monotonic() - t0, 2)
        yield ks


@pytest.fixture(scope="session")
def nova_federation(keystone_federation: Any) -> Iterator[Any]:
    """Real Nova validating tokens against ``keystone_federation``."""
    t0 = time.monotonic()
    with launch.nova_oracle(keystone=keystone_federation) as nova:
        nova.data["fixture_start_s"] = round(time.monotonic() - t0, 2)
        yield nova
