"""VCycle's ``##user_data_*##`` placeholders, so existing operator templates keep working.

Substitution is exact text replacement, as in VCycle (research-vcycle.md §2.8), with two
fixes: an unknown ``##user_data_...##`` placeholder is an error naming it (VCycle silently
deleted it), and ``heartbeat_machines_url`` includes the machinetype (VCycle's did not,
though its own web layout needed it).  Text like ``##HOSTNAME##`` that is not a
``user_data_`` placeholder is left alone.  cloudvac adds ``##user_data_joboutputs_token##``
(the VM's bearer token for uploads, replacing VCycle's X.509 DN check): a template that
uses ``##user_data_joboutputs_url##`` without it is refused (``check_uploads``), since every
upload it makes would get 401 and its VM would never be counted.

``##user_data_option_cvmfs_proxy##`` is combined as VCycle combined it with
``cvmfs_proxy_machinetype`` (research-vcycle.md §2.8): the squids discovered among the
heartbeating VMs of the space's ``squid_machinetype`` (``http://IP:PORT|...``, one
load-balanced group), then ``;`` and the machinetype's own ``user_data_option_cvmfs_proxy``
as the fallback group; with no squid found, the option unchanged.  Without that option the
fallback group is the space's ``squid_proxies`` (the discovered squids alone, or ``DIRECT``,
when there are none), as for the built-in templates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

PLACEHOLDER = re.compile(r"##user_data_([A-Za-z0-9_]+)##")
DEPRECATED = {"vmtype": "machinetype", "vm_hostname": "machine_hostname",
              "vmlm_version": "manager_version", "vmlm_hostname": "manager_hostname"}


class PlaceholderError(ValueError):
    """A template uses placeholders cloudvac does not know, or uploads without the token."""


def check_uploads(template: str) -> None:
    """Raise PlaceholderError when ``template`` uses the joboutputs URL but never the token
    cloudvac's uploads need, saying what to add."""
    if "##user_data_joboutputs_url##" not in template or \
            "##user_data_joboutputs_token##" in template:
        return
    how = (" (client certificates, as VCycle's `curl --cert`, are not accepted)"
           if re.search(r"curl\b(?:[^\n]|\\\n)*?(?:--cert\b|\s-E\s)", template) else "")
    raise PlaceholderError(
        "the template uploads to ##user_data_joboutputs_url## without the VM's token: "
        f"cloudvac accepts uploads only with it{how}, so every upload would get 401 and the "
        "VM would never be counted; send the header 'Authorization: Bearer "
        "##user_data_joboutputs_token##' with each upload, e.g. curl -H \"Authorization: "
        "Bearer ##user_data_joboutputs_token##\" --upload-file FILE "
        "##user_data_joboutputs_url##/FILE")


def substitute(template: str, values: Mapping[str, str]) -> str:
    """Replace every ``##user_data_NAME##`` with ``values[NAME]`` (deprecated VCycle names
    included); raise PlaceholderError listing the names that have no value."""
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        key = DEPRECATED.get(key, key)
        if key in values:
            return values[key]
        missing.append(match.group(0))
        return match.group(0)

    result = PLACEHOLDER.sub(replace, template)
    if missing:
        raise PlaceholderError("unknown placeholder(s) " + ", ".join(sorted(set(missing))) +
                               "; known: " + ", ".join(f"##user_data_{k}##"
                                                       for k in sorted(values)))
    return result
