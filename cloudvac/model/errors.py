"""The cloud error taxonomy: what an adapter may raise, by lifecycle meaning.

An adapter translates its libraries' exceptions into these and lets nothing else of
theirs escape.  Anything that is not a ``CloudError`` is a bug: the cycle logs it with
its traceback, counts it, and fails that space's cycle visibly (never retried silently).
``str()`` of every error is safe to log and show.
"""

from __future__ import annotations


class CloudError(Exception):
    """Base of every error an adapter may raise."""


class Retryable(CloudError):
    """Transient: 5xx, timeout, connection refused.  Try again next cycle."""


class QuotaExceeded(CloudError):
    """The cloud refused for quota reasons (Nova 403 quota, 413).  Never sets backoff."""


class Gone(CloudError):
    """The object does not exist (404)."""


class AuthFailed(CloudError):
    """Credentials refused even after one re-authentication (401)."""


class Misconfigured(CloudError):
    """The request itself is wrong (400: bad flavor, image, network).  Carries the cloud's
    own message so the operator sees what to fix."""


class NotSent(CloudError):
    """A create that never left cloudvac: a lookup it needed failed (image, network), or
    the cloud could not be connected to.  Nothing was created, so its intent is freed at
    once; ``str()`` says what failed."""
