"""A keystoneauth1 plugin: Check-in access token -> Keystone OS-FEDERATION -> project token.

Built on keystoneauth's public ``FederationBaseAuth``: it only supplies the unscoped token
(``get_unscoped_auth_ref``); keystoneauth rescopes it to the project, renews it before it
expires and, after a 401 from any service, re-authenticates once.  Here a refusal of the
access token by Keystone is retried once with a fresh access token, then diagnosed: a
Keystone 401 cannot say why, so the message names the likely causes and, when the
provider's userinfo shows them, the entitlements the token carries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keystoneauth1 import access
from keystoneauth1 import session as ks_session
from keystoneauth1.identity.v3 import FederationBaseAuth

from cloudvac.auth.checkin import CheckinTokenSource, fingerprint
from cloudvac.model.errors import AuthFailed
from cloudvac.model.redact import redact

log = logging.getLogger("cloudvac.auth.federation")
VM_OPERATOR = "urn:mace:egi.eu:group:{vo}:role=vm_operator#aai.egi.eu"


@dataclass(frozen=True, slots=True)
class Federation:
    """Where a Check-in token is exchanged: a site's Keystone and project, its identity
    provider and protocol names, and the VO whose entitlement grants access."""

    auth_url: str
    project_id: str
    identity_provider: str = "egi.eu"
    protocol: str = "openid"
    vo: str | None = None


class CheckinAuth(FederationBaseAuth):
    def __init__(self, federation: Federation, source: CheckinTokenSource,
                 on_auth: Callable[[], None] | None = None) -> None:
        super().__init__(federation.auth_url, federation.identity_provider,
                         federation.protocol, project_id=federation.project_id)
        self.source, self.vo = source, federation.vo
        self.on_auth = on_auth or (lambda: None)

    def get_unscoped_auth_ref(self, session: ks_session.Session) -> access.AccessInfoV3:
        self.on_auth()
        token = self.source.access_token()
        response = self._federate(session, token.value)
        if response.status_code == 401:
            token = self.source.access_token(force=True)  # maybe only that token was stale
            response = self._federate(session, token.value)
        if response.status_code != 201:
            # The Keystone URL in it may come from site discovery (a remote answer).
            raise AuthFailed(redact(self._diagnose(response.status_code, token)))
        info = access.create(resp=response)
        assert isinstance(info, access.AccessInfoV3)
        log.info("space=- machinetype=- machine=- Keystone %s federated token via %s/%s "
                 "expires %s (access token sha256:%s)", self.auth_url, self.identity_provider,
                 self.protocol, info.expires.isoformat() if info.expires else "-",
                 fingerprint(token.value))
        return info

    def _federate(self, session: ks_session.Session, bearer: str) -> Any:
        return session.post(self.federated_token_url, authenticated=False, raise_exc=False,
                            headers={"Authorization": f"Bearer {bearer}"}, log=False)

    def _diagnose(self, status: int, token: Any) -> str:
        where = f"Keystone {self.auth_url} (identity provider {self.identity_provider}, " \
                f"protocol {self.protocol})"
        if status == 409:
            return (f"{where} answered 409: this Check-in user already exists there through "
                    "another protocol; use that egi_protocol")
        if status != 401:
            return f"{where} refused the federated login with HTTP {status}"
        causes = [f"the site maps no rule for this token's entitlements (it usually needs "
                  f"{VM_OPERATOR.format(vo=self.vo or '<vo>')})",
                  "the site uses another protocol name (egi_protocol = oidc or openid)",
                  "the site does not trust this Check-in issuer"]
        claims = self.source.userinfo(token)
        entitlements = claims.get("eduperson_entitlement")
        if isinstance(entitlements, list) and self.vo:
            wanted = VM_OPERATOR.format(vo=self.vo)
            if wanted not in entitlements:
                causes.insert(0, f"the token lacks {wanted} (it has "
                                 f"{len(entitlements)} entitlements, none for that role)")
        return f"{where} refused the Check-in access token (401); likely causes: " + \
            "; ".join(causes)
