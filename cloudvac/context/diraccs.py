"""The DIRAC Configuration Service (CS) snippet that registers a space as a DIRAC site:
one CFG per DIRAC instance the space reports to (research-dirac §3.6, §4.2, §4.3).

One space is one CE (CE name = space name) at site ``<prefix>.<site_name>`` of each
instance (``site_name_<instance>`` over ``site_name``); each machinetype reporting to that
instance is a queue of the CE.  The pilot's ``CheckCECapabilities`` reads the queue and
``CheckWNCapabilities`` takes ``NumberOfProcessors`` and ``MaxRAM`` (MB) from it, so the
queue must say what the VM really has: the flavor's vCPUs and RAM (``QueueSize``), with
``Tag = MultiProcessor`` above one processor.  A machinetype with a host certificate adds
``/Registry/Hosts/<CN>`` with its DN and ``Properties = GenericPilot, LimitedDelegation``.

Every function is pure except ``host_identity`` (reads a certificate).  Each text parses
with ``diraccfg`` on its own; anything that cannot be written in the CS format raises
``ValueError`` naming the culprit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from cloudvac.config.dirac import DiracInstance
from cloudvac.config.models import Machinetype, Space
from cloudvac.context.dirac import site_of

ARCHITECTURE = "x86_64"
SI00_PER_HS06 = 250  # DIRAC's SI00 = 250 x HS06 convention
HOST_PROPERTIES = "GenericPilot, LimitedDelegation"  # what GridPP's AutoVac2CSAgent writes

# A CS value we write on one line: no braces (section syntax), no '=' (option syntax), no
# ',' (list separator), no '#' (comment), no control characters; not empty (§4.3 rules).
_CFG_EDGE = r"[^\s{}=,#\x00-\x1f\x7f]"
_CFG_VALUE = re.compile(rf"^{_CFG_EDGE}([^{{}}=,#\x00-\x1f\x7f]*{_CFG_EDGE})?$")
# A DN in OpenSSL's slash form: '=' and '/' allowed (CN=host/name), the rest as above.
_DN = re.compile(r"^/[A-Za-z0-9.]+=[^{},#\x00-\x1f\x7f]*[^\s{},#\x00-\x1f\x7f]$")

# OpenSSL's short names, as DIRAC writes DNs (/DC=ch/DC=cern/OU=computers/CN=...).
_SHORT = {NameOID.COUNTRY_NAME: "C", NameOID.STATE_OR_PROVINCE_NAME: "ST",
          NameOID.LOCALITY_NAME: "L", NameOID.ORGANIZATION_NAME: "O",
          NameOID.ORGANIZATIONAL_UNIT_NAME: "OU", NameOID.COMMON_NAME: "CN",
          NameOID.DOMAIN_COMPONENT: "DC", NameOID.EMAIL_ADDRESS: "emailAddress",
          NameOID.SERIAL_NUMBER: "serialNumber", NameOID.USER_ID: "UID"}


@dataclass(frozen=True, slots=True)
class QueueSize:
    """What one VM of a machinetype has: vCPUs and RAM (MB; 0: unknown, then
    ``mb_per_processor`` x processors), and where that was learnt (for the header)."""

    processors: int
    ram_mb: int = 0
    source: str = "configuration"


@dataclass(frozen=True, slots=True)
class HostIdentity:
    """A host certificate as DIRAC's Registry knows it: ``/Registry/Hosts/<name>``."""

    name: str
    dn: str


def host_identity(cert_file: Path) -> HostIdentity:
    """The DN (OpenSSL slash form, RDNs in certificate order, as DIRAC writes them) and the
    CN (the Registry entry's name; a ``host/`` prefix dropped) of the first certificate in
    ``cert_file``.  Raises ``ValueError`` naming the file if it cannot be read or parsed."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"host certificate {cert_file}: {reason}") from None
    parts = []
    for rdn in cert.subject.rdns:
        parts.append("+".join(f"{_SHORT.get(a.oid, a.oid.dotted_string)}={a.value!s}"
                              for a in rdn))
    dn = "/" + "/".join(parts)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns:
        raise ValueError(f"host certificate {cert_file}: subject {dn} has no CN")
    name = str(cns[-1].value).removeprefix("host/")
    if not _DN.match(dn):
        raise ValueError(f"host certificate {cert_file}: DN {dn!r} cannot be written in the "
                         "CS format")
    return HostIdentity(_value("host name", name), dn)


# --------------------------------------------------------------------------------------------
# Emitting

_Tree = dict[str, "str | _Tree"]


def _value(key: str, value: str) -> str:
    if not _CFG_VALUE.match(value):
        raise ValueError(f"CS value of {key} {value!r} cannot be written in the CS format")
    return value


def _emit(tree: _Tree, depth: int, out: list[str]) -> None:
    pad = "  " * depth
    for key, value in tree.items():
        if isinstance(value, dict):
            out += [f"{pad}{_value('section', key)}", f"{pad}{{"]
            _emit(value, depth + 1, out)
            out.append(f"{pad}}}")
        else:
            out.append(f"{pad}{key} = {value}")


def _machinetypes(instance: DiracInstance, space: Space) -> list[Machinetype]:
    return [mt for mt in space.machinetypes.values() if mt.dirac == instance.name]


def _queue(mt: Machinetype, size: QueueSize) -> _Tree:
    count = size.processors
    if count < 1:
        raise ValueError(f"machinetype {mt.name!r}: processors must be >= 1, got {count}")
    queue: _Tree = {
        # minutes of CPU the pilot may advertise: the whole lifetime on every processor
        "maxCPUTime": str(max(1, math.ceil(mt.max_wallclock_seconds * count / 60))),
    }
    if mt.hs06_per_processor is not None:
        queue["SI00"] = str(round(mt.hs06_per_processor * SI00_PER_HS06))
    queue["NumberOfProcessors"] = str(count)
    queue["MaxRAM"] = str(size.ram_mb or mt.mb_per_processor * count)
    if mt.vo:
        queue["VO"] = _value(f"{mt.name} VO", mt.vo)
    if count > 1:
        queue["Tag"] = "MultiProcessor"
    return queue


def _hosts(mts: list[Machinetype], hosts: Mapping[str, HostIdentity]) -> _Tree:
    found: _Tree = {}
    for mt in mts:
        host = hosts.get(mt.name)
        if host is None:
            continue
        entry: _Tree = {"DN": host.dn, "Properties": HOST_PROPERTIES}
        if found.get(host.name, entry) != entry:
            raise ValueError(f"two host certificates with CN {host.name!r} but different DNs")
        found[host.name] = entry
    return found


def cs_text(instance: DiracInstance, space: Space, sizes: Mapping[str, QueueSize],
            hosts: Mapping[str, HostIdentity] | None = None) -> str:
    """The CFG for ``instance``: ``/Resources/Sites/<Domain>/<Site>`` with ``Name``, ``CE``
    and ``CEs/<space>`` (``CEType``, ``architecture``, ``OS``, ``LocalCEType``, ``VO``
    list), one ``Queues/<machinetype>`` per machinetype of the instance with ``maxCPUTime``
    (minutes: ceil(max_wallclock_seconds x processors / 60)), ``SI00`` (250 x HS06 per
    processor, if known), ``NumberOfProcessors`` and ``MaxRAM`` (``sizes[mt]``),
    ``VO`` and ``Tag = MultiProcessor`` above one processor; then ``/Registry/Hosts`` for
    the machinetypes in ``hosts`` (machinetype -> its host certificate).  Starts with
    ``#`` lines naming the instance and where each queue's size came from.  Raises
    ``ValueError`` if a machinetype has no entry in ``sizes``."""
    site = site_of(instance, space)
    domain, gocdb_name, _ = site.split(".")
    mts = _machinetypes(instance, space)
    missing = [mt.name for mt in mts if mt.name not in sizes]
    if missing:
        raise ValueError(f"no processor count for machinetype(s) {', '.join(missing)}")
    ce: _Tree = {
        "CEType": _value("CEType", instance.ce_type),
        "architecture": ARCHITECTURE,
        "OS": _value("OS", instance.os),
        "LocalCEType": _value("LocalCEType", instance.local_ce_type),
    }
    vos = sorted({_value("VO", mt.vo) for mt in mts if mt.vo})
    if vos:
        ce["VO"] = ", ".join(vos)
    ce["Queues"] = {mt.name: _queue(mt, sizes[mt.name]) for mt in mts}
    tree: _Tree = {"Resources": {"Sites": {domain: {site: {
        "Name": gocdb_name, "CE": space.name, "CEs": {space.name: ce}}}}}}
    registry = _hosts(mts, hosts or {})
    if registry:
        tree["Registry"] = {"Hosts": registry}
    out = [f"# DIRAC instance {instance.name}: site {site}, CE {space.name} "
           f"(setup {instance.setup})"]
    out += [f"# queue {mt.name}: {sizes[mt.name].processors} processors from "
            f"{sizes[mt.name].source}" for mt in mts]
    _emit(tree, 0, out)
    return "\n".join(out) + "\n"


def cs_snippets(space: Space, sizes: Mapping[str, QueueSize],
                hosts: Mapping[str, HostIdentity] | None = None) -> dict[str, str]:
    """Instance name -> ``cs_text`` for every instance of ``space.dirac_instances``, in
    that order.  Each goes into a different CS: load them separately (two would repeat
    ``Resources``, which ``diraccfg`` rejects)."""
    return {name: cs_text(instance, space, sizes, hosts)
            for name, instance in space.dirac_instances.items()}
