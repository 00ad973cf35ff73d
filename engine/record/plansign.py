"""Signing keys for saved plans: HMAC-SHA256 with a key held by CI.

A plan hash proves a plan file is intact against accidents, but whoever can edit the file can
recompute it. A key that only CI holds (a masked variable) closes that: `plan -o` signs the
file's canonical body, and `apply` refuses a plan that is unsigned, signed with another key or
altered after signing. The key comes from `PLAYBOOK_PLAN_KEY` (the key itself) or
`PLAYBOOK_PLAN_KEY_FILE` (a file holding it, such as a GitLab "File" variable); setting both is
an error rather than a guess. The key is registered with the scrubber and never written
anywhere; plans carry only a key id, itself an HMAC, so two keys can be told apart in a message.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

from engine.errors import LoadError
from engine.secrets import Secret

__all__ = ["KEY_ENV", "KEY_FILE_ENV", "MIN_KEY_LEN", "ALGORITHM", "PlanKey", "plan_key"]

KEY_ENV = "PLAYBOOK_PLAN_KEY"
KEY_FILE_ENV = "PLAYBOOK_PLAN_KEY_FILE"
#: Shorter keys are refused: a short HMAC key can be found by trying candidates against a plan.
MIN_KEY_LEN = 16
ALGORITHM = "hmac-sha256"


@dataclass(frozen=True)
class PlanKey:
    """A plan-signing key and where it came from (`source`, for messages). Masks itself."""

    secret: Secret
    source: str

    @property
    def key_id(self) -> str:
        """A short public name for the key: an HMAC of a fixed label, not the key."""
        return hmac.new(self._bytes(), b"playbook plan key id", hashlib.sha256).hexdigest()[:16]

    def sign(self, body: bytes) -> str:
        """The HMAC-SHA256 of `body`, in hex."""
        return hmac.new(self._bytes(), body, hashlib.sha256).hexdigest()

    def verify(self, body: bytes, signature: str) -> bool:
        """Whether `signature` is this key's HMAC of `body` (compared in constant time)."""
        return hmac.compare_digest(self.sign(body), signature)

    def _bytes(self) -> bytes:
        return self.secret.reveal().encode("utf-8")


def plan_key(environ: Mapping[str, str] | None = None) -> PlanKey | None:
    """The configured signing key, or None when neither variable is set (or both are empty)."""
    env = os.environ if environ is None else environ
    value, from_file = env.get(KEY_ENV, ""), env.get(KEY_FILE_ENV, "")
    if value and from_file:
        raise LoadError(f"both {KEY_ENV} and {KEY_FILE_ENV} are set: set only one (which key is meant?)")
    source = KEY_ENV
    if from_file:
        source = f"{KEY_FILE_ENV} ({from_file})"
        try:
            with open(os.path.expanduser(from_file), encoding="utf-8") as fh:
                value = fh.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise LoadError(f"{KEY_FILE_ENV}: cannot read the plan key from {from_file}: {why}") from None
        if not value:
            raise LoadError(f"{KEY_FILE_ENV}: {from_file} is empty")
    if not value:
        return None
    key = PlanKey(Secret(value), source)  # registered with the scrubber before any use
    if len(value) < MIN_KEY_LEN:
        raise LoadError(
            f"{source}: the plan key must be at least {MIN_KEY_LEN} characters (got {len(value)}); "
            "make one with: openssl rand -hex 32"
        )
    return key
