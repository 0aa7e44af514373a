"""keystoneauth1 sessions per space: Keystone v3 password or application credential.

One ``Session`` per space lives as long as the space's adapter, so the token is fetched
once and renewed by keystoneauth shortly before it expires; a 401 from a service makes
keystoneauth re-authenticate once and retry (``allow_reauth``).  Every token fetch is
counted, so the "auth calls per space per hour" figure is observable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

from cloudvac import __version__
from cloudvac.auth.cancel import CancellableHTTP
from cloudvac.auth.checkin import CheckinClient, CheckinTokenSource
from cloudvac.auth.discovery import SiteEndpoint
from cloudvac.auth.federation import CheckinAuth, Federation
from cloudvac.config.openstack import OpenStackSpace
from cloudvac.config.secrets import SecretError, read_secret


class _Counting:
    """Mixin: call ``on_auth`` each time the plugin fetches a new token from Keystone."""

    on_auth: Callable[[], None] = staticmethod(lambda: None)

    def get_auth_ref(self, session: ks_session.Session, **kwargs: Any) -> Any:
        self.on_auth()
        return super().get_auth_ref(session, **kwargs)  # type: ignore[misc]


class CountingPassword(_Counting, v3.Password):
    pass


class CountingApplicationCredential(_Counting, v3.ApplicationCredential):
    pass


def make_plugin(options: OpenStackSpace, on_auth: Callable[[], None],
                checkin: CheckinTokenSource | None = None,
                site: SiteEndpoint | None = None) -> v3.Auth | CheckinAuth:
    """The auth plugin for ``options``; reads the secret now (raises SecretError).  For
    ``egi_checkin``, ``checkin`` is the token source and ``site`` the discovered endpoint
    (used for whatever the configuration leaves unset)."""
    plugin: v3.Auth
    if options.auth == "egi_checkin":
        assert checkin is not None
        auth_url = options.auth_url or (site.auth_url if site else None)
        project_id = options.egi_project_id or (site.project_id if site else None)
        if auth_url is None or project_id is None:
            raise SecretError("egi_checkin: no Keystone URL or project id (configure auth_url "
                              "and egi_project_id, or egi_site and egi_vo for discovery)")
        federation = Federation(auth_url, project_id, options.egi_identity_provider,
                                options.egi_protocol, options.egi_vo)
        return CheckinAuth(federation, checkin, on_auth)
    assert options.auth_url is not None  # the model requires it for these methods
    if options.auth == "password":
        plugin = CountingPassword(
            auth_url=options.auth_url, username=options.username,
            user_domain_name=options.user_domain_name,
            password=read_secret(options.password_file, options.password_env, "password"),
            project_name=options.project_name, project_id=options.project_id,
            project_domain_name=options.project_domain_name if options.project_name else None)
    else:
        plugin = CountingApplicationCredential(
            auth_url=options.auth_url,
            application_credential_id=options.application_credential_id,
            application_credential_name=options.application_credential_name,
            username=options.username, user_domain_name=options.user_domain_name,
            application_credential_secret=read_secret(
                options.application_credential_secret_file,
                options.application_credential_secret_env, "application credential secret"))
    plugin.on_auth = on_auth
    return plugin


def checkin_source(options: OpenStackSpace, on_call: Callable[[str], None] | None = None,
                   state_dir: Path | None = None) -> CheckinTokenSource:
    """The space's Check-in token source; rotated refresh tokens go to
    ``state_dir/checkin`` (in memory only without a state directory)."""
    assert options.egi_checkin_client_id is not None
    file, env = options.egi_checkin_client_secret_file, options.egi_checkin_client_secret_env

    def secret() -> str | None:
        return read_secret(file, env, "egi_checkin_client_secret") if file or env else None

    return CheckinTokenSource(CheckinClient(
        options.egi_checkin_url, options.egi_checkin_client_id, options.checkin_grant,
        options.egi_checkin_scope, secret, options.egi_checkin_refresh_token_file,
        options.egi_checkin_refresh_token_env, timeout=options.api_timeout_seconds,
        rotated_dir=state_dir / "checkin" if state_dir is not None else None),
        on_call=on_call)


def make_session(options: OpenStackSpace, on_auth: Callable[[], None],
                 checkin: CheckinTokenSource | None = None,
                 site: SiteEndpoint | None = None) -> ks_session.Session:
    return ks_session.Session(
        auth=make_plugin(options, on_auth, checkin, site),
        verify=str(options.ca_file) if options.ca_file else True, session=CancellableHTTP(),
        timeout=options.api_timeout_seconds, app_name="cloudvac", app_version=__version__)
