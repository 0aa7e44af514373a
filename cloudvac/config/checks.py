"""Checks beyond one option's type: secret files that must be private, and warnings for
configurations that are valid but would silently do nothing or harm.

Secret files are checked from the option's text as written, whether or not the rest of
its section is valid (a 0644 key is reported in the same run as a typo next to it), and
named as written (a ``Path`` would print ``https://x`` as ``https:/x``).

Warnings (nothing is refused; ``cloudvac validate`` exits 0 on warnings alone):

* a space where no machinetype has ``target_share`` above 0: nothing is ever created;
* a loopback (or unspecified) ``web_url`` while a space's VMs run in a cloud, not on this
  host: they would be told ``http://127.0.0.1:...`` and never reach cloudvac;
* ``egi_vo`` matching the ``vo`` of no machinetype of its space: the space's VMs would run
  in another VO's project;
* options of another ``auth`` method than the space's: set, and ignored;
* an OpenStack machinetype that may create VMs but has no ``root_image``: every creation
  would fail.
* ``apel_cloud_records`` in a space while ``apel_outgoing_dir`` is unset: no record would
  be written.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from cloudvac.config.ini import Issue, Section
from cloudvac.config.models import Space
from cloudvac.config.secrets import SecretError, check_secret_file
from cloudvac.config.settings import Settings

SETTINGS_SECRETS = (("operator_token_file", False), ("web_tls_key", True),
                    ("operator_tls_key", True))
"""(option, whether its group may read it): a TLS key may be shared with a group.  Checked
by ``cloudvac validate``, not by the loader: ``status`` on another host needs the settings
without the web's key, and ``run`` refuses a bad one at start."""
OPENSTACK_SECRETS = ("password_file", "application_credential_secret_file",
                     "egi_checkin_client_secret_file", "egi_checkin_refresh_token_file")
MACHINETYPE_SECRETS = ("host_key_file", "pilot_proxy_file")
AUTH_OPTIONS = {
    "password": ("password_file", "password_env"),
    "application_credential": ("application_credential_id", "application_credential_name",
                               "application_credential_secret_file",
                               "application_credential_secret_env"),
    "egi_checkin": ("egi_",),
}
"""Options only one ``auth`` method reads (a name ending in ``_`` is a prefix)."""
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost",
                            "ip6-loopback"})


def check_secrets(section: Section, options: Iterable[str | tuple[str, bool]],
                  issues: list[Issue]) -> bool:
    """Each of ``options`` set in ``section`` names an existing private file; an ``Issue``
    at the option for each that does not.  An entry ``(option, True)`` lets the file's
    group read it."""
    good = True
    for entry in options:
        option, group_ok = entry if isinstance(entry, tuple) else (entry, False)
        raw = section.values.get(option)
        if raw is None or not raw[0]:
            continue
        try:
            check_secret_file(Path(raw[0]), option, shown=raw[0], group_ok=group_ok)
        except SecretError as exc:
            issues.append(Issue(section.where(option), section.title, option, str(exc)))
            good = False
    return good


def advice(settings: Settings | None, settings_section: Section | None,
           spaces: Mapping[str, Space], sections: Mapping[tuple[str, ...], Section]
           ) -> list[Issue]:
    """Warnings for the valid ``spaces`` (see the module docstring); ``sections`` by key."""
    found: list[Issue] = []
    for space in spaces.values():
        section = sections[("space", space.name)]
        found += _shares(space, section)
        found += _auth_options(space, section)
        found += _root_images(space, sections)
    if settings is not None:
        found += _web_url(settings, settings_section, spaces, sections)
        found += [Issue(sections[("space", s.name)].where("apel_cloud_records"),
                        sections[("space", s.name)].title, "apel_cloud_records",
                        "set, but apel_outgoing_dir in [settings] is not: no APEL record "
                        "(cloud or job) would be written")
                  for s in spaces.values()
                  if s.apel_cloud_records and settings.apel_outgoing_dir is None]
    return found


def _shares(space: Space, section: Section) -> list[Issue]:
    if any(mt.target_share > 0 for mt in space.machinetypes.values()):
        return []
    return [Issue(section.header, section.title, "target_share", "no machinetype of this "
                  "space has a target_share above 0: nothing will ever be created in it")]


def _auth_options(space: Space, section: Section) -> list[Issue]:
    options = space.openstack
    if options is None:
        return []
    found = []
    ignored = [o for method, names in AUTH_OPTIONS.items() if method != options.auth
               for o in section.values if any(_named(o, n) for n in names)]
    if ignored:
        found.append(Issue(section.where(ignored[0]), section.title, ignored[0],
                           f"ignored with auth = {options.auth}: {', '.join(ignored)} "
                           f"{'is' if len(ignored) == 1 else 'are'} read by another auth "
                           "method only"))
    if options.auth == "egi_checkin" and options.egi_vo is not None and not any(
            mt.vo == options.egi_vo for mt in space.machinetypes.values()):
        found.append(Issue(section.where("egi_vo"), section.title, "egi_vo", (
            "matches the vo of no machinetype of this space (machinetypes: "
            f"{', '.join(space.machinetypes)}): their VMs would run in another VO's project; "
            "set vo in each machinetype, or use one space per VO")))
    return found


def _named(option: str, name: str) -> bool:
    return option.startswith(name) if name.endswith("_") else option == name


def _root_images(space: Space, sections: Mapping[tuple[str, ...], Section]) -> list[Issue]:
    if space.api != "openstack":
        return []
    found = []
    for mt in space.machinetypes.values():
        if mt.target_share > 0 and not mt.root_image:
            section = sections[("machinetype", space.name, mt.name)]
            found.append(Issue(section.header, section.title, "root_image", "not set: every "
                               "creation of this machinetype would fail; give an image name "
                               "or id from the cloud's Glance"))
    return found


def _web_url(settings: Settings, section: Section | None, spaces: Mapping[str, Space],
             sections: Mapping[tuple[str, ...], Section]) -> list[Issue]:
    remote = [s.name for s in spaces.values() if s.api != "sim"]
    host = urlsplit(settings.web_base_url).hostname or ""
    if not remote or not unreachable(host):
        return []
    option = "web_url" if settings.web_url else "web_listen"
    if section is not None:
        where, title = section.where(option if option in section.values else None), "settings"
    else:
        first = sections[("space", remote[0])]
        where, title = first.header, first.title
    told = "web_url is" if settings.web_url else "web_url is not set and web_listen is"
    return [Issue(where, title, option, (
        f"{told} a loopback or unspecified address, but the VMs of {', '.join(remote)} run "
        "in a cloud, not on this host: they could never reach cloudvac (no heartbeat, no "
        "shutdown message, deleted as lost); set web_url in [settings] to the https:// URL "
        "they reach"))]


def unreachable(host: str) -> bool:
    """Whether VMs elsewhere could never reach ``host``: a loopback name or address, or
    an unspecified one (``0.0.0.0``, ``::``)."""
    host = host.strip("[]").lower().rstrip(".")
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified
