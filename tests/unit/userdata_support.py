"""The space the user_data tests render for: the paper's Napoli cloud with one machinetype per
shipped template (belle, t2k, hyperk; squid gets the generic one), fixed test secrets, a
fixed signing key and clock, so that every render is the same bytes."""

from __future__ import annotations

from pathlib import Path

from cloudvac.auth.vmtokens import TokenSigner
from cloudvac.config import Settings, Space, load_config_dir
from cloudvac.context.userdata import ContextRenderer

NAME = "cloudvac-abcdef-{mt}-0123456789"
CLOCK = 1_800_000_000.0
SIGNING_KEY = b"k" * 32
HOST_CERT = "-----BEGIN CERTIFICATE-----\nMIIcert\n-----END CERTIFICATE-----\n"
HOST_KEY = "-----BEGIN PRIVATE KEY-----\nMIIsecretkey\n-----END PRIVATE KEY-----\n"
CONFIG = """\
[settings]
web_url = https://cloudvac.example.org:8443

[dirac belle2]
format = setups
site_prefix = VCYCLE
setup = Belle-KEK
configuration_servers = dips://dirac.cc.kek.jp:9135/Configuration/Server
project = Belle

[dirac gridpp]
format = operations
site_prefix = CLOUD
setup = GridPP
configuration_servers = dips://dirac01.grid.hep.ph.ic.ac.uk:9135/Configuration/Server

[space napoli.infn.it]
api = sim
site_name = RECAS-NAPOLI.it
flavor_names = m1.large
squid_proxies = http://squid1.na.infn.it:3128 http://squid2.na.infn.it:3128
squid_machinetype = squid

[machinetype napoli.infn.it belle]
dirac = belle2
vo = belle
user_data = builtin:belle
target_share = 2
host_cert_file = {cert}
host_key_file = {key}
heartbeat_file = heartbeat
heartbeat_seconds = 900

[machinetype napoli.infn.it t2k]
dirac = gridpp
vo = t2k.org
user_data = builtin:t2k
target_share = 1
pilot_options = /Resources/Computing/CEDefaults/NumberOfProcessors=4

[machinetype napoli.infn.it hyperk]
dirac = gridpp
vo = hyperk.org
user_data = builtin:hyperk
target_share = 1
block_metadata = false

[machinetype napoli.infn.it squid]
target_share = 0
"""


def napoli(directory: Path) -> tuple[Space, Settings]:
    """Load CONFIG (and any other config file already there) from ``directory``, with the
    host certificate and key written there."""
    cert, key = directory / "hostcert.pem", directory / "hostkey.pem"
    cert.write_text(HOST_CERT)
    key.write_text(HOST_KEY)
    key.chmod(0o600)
    (directory / "10.conf").write_text(CONFIG.format(cert=cert, key=key))
    loaded = load_config_dir(directory)
    assert loaded.issues == [] and loaded.settings is not None, loaded.issues
    return loaded.spaces["napoli.infn.it"], loaded.settings


def renderer(settings: Settings, squids: list[str] | None = None) -> ContextRenderer:
    """The fixed clock and key; ``squids`` are the addresses squid discovery finds."""
    return ContextRenderer(settings, TokenSigner(SIGNING_KEY), clock=lambda: CLOCK,
                           squids=lambda space, mt, since: list(squids or []))
