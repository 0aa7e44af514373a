"""CVMFS proxy lists (``squid_proxies``): checked and written the way CVMFS reads them.

CVMFS_HTTP_PROXY is groups separated by ``;`` (tried in order), each of proxies separated by
``|`` (load-balanced), each proxy ``http://HOST:PORT`` or the keywords ``DIRECT`` and
``auto``.  A proxy given without a scheme is ``http://``; without a port, ``SQUID_PORT``.
Anything else (another scheme, credentials, a path, a host that is not a DNS name or an IP
address) is refused: CVMFS would fail on it at the VM's boot, not here.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

SQUID_PORT = 3128
KEYWORDS = frozenset({"DIRECT", "auto"})
HOST = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
                  r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def normalize_proxy_list(value: str) -> str:
    """``value`` (one squid_proxies entry, possibly with ``|`` and ``;``) with every proxy
    as ``http://HOST:PORT``; ValueError naming the first proxy that is not one."""
    pieces = re.split(r"([|;])", value)
    return "".join(p if p in ("|", ";") else normalize_proxy(p) for p in pieces)


def normalize_proxy(proxy: str) -> str:
    if proxy in KEYWORDS:
        return proxy
    url = proxy if "://" in proxy else "http://" + proxy
    try:
        split = urlsplit(url)
        port = SQUID_PORT if split.port is None else split.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"CVMFS proxy {proxy!r}: not http://HOST[:PORT] (PORT 1-65535)")
    if split.scheme != "http":
        raise ValueError(f"CVMFS proxy {proxy!r}: CVMFS speaks only http:// to its proxies")
    if split.username is not None or split.path not in ("", "/") or split.query or \
            split.fragment:
        raise ValueError(f"CVMFS proxy {proxy!r}: only http://HOST[:PORT], without "
                         "credentials or path")
    return f"http://{_host(proxy, split.hostname or '')}:{port}"


def _host(proxy: str, host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if HOST.match(host):
            return host
        raise ValueError(f"CVMFS proxy {proxy!r}: {host!r} is not a host name or IP "
                         "address") from None
    return f"[{address}]" if address.version == 6 else str(address)
