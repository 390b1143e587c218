"""Access tokens as Azure hands them out: JWTs (HS256) with ``tid``, ``oid``, ``aud``, ``exp``, signed with a key
derived from the API token — so every replica sharing that token verifies every other's, and a new API token
voids all of them. Clients such as az read ``tid`` from the token; overhaul verifies signature, audience and
lifetime on every call. The opaque API token keeps working beside them."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Any

# The audience (ARM's "resource") overhaul's tokens are for: /metadata/endpoints gives it to clients.
AUDIENCE = "https://management.overhaul/"
AUDIENCES = frozenset({AUDIENCE, AUDIENCE.rstrip("/")})
LIFETIME = 3600  # seconds, as Azure's managed identity tokens (at least)
LEEWAY = 30  # seconds of clock difference tolerated on nbf / exp
MAX_TOKEN_CHARS = 8192


class TokenRefused(Exception):
    """An access token that is not good: ``code`` is ARM's (InvalidAuthenticationToken, ExpiredAuthenticationToken)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Identity:
    """Who overhaul's tokens speak for: one tenant and one (system-assigned) identity per API token."""

    tenant: str
    object_id: str
    client_id: str


class Tokens:
    def __init__(self, api_token: str) -> None:
        secret = api_token.encode()
        self._key = hmac.new(secret, b"overhaul access tokens v1", hashlib.sha256).digest()
        seed = hmac.new(secret, b"overhaul identity v1", hashlib.sha256).hexdigest()
        self.identity = Identity(
            tenant=str(uuid.uuid5(uuid.NAMESPACE_URL, f"overhaul:tenant:{seed}")),
            object_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"overhaul:object:{seed}")),
            client_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"overhaul:client:{seed}")),
        )

    @property
    def issuer(self) -> str:
        return f"https://sts.overhaul/{self.identity.tenant}/"

    def _sign(self, signing_input: bytes) -> bytes:
        return hmac.new(self._key, signing_input, hashlib.sha256).digest()

    def issue(self, now: float, resource: str = AUDIENCE) -> tuple[str, int]:
        """A token for ``resource`` valid from ``now`` for LIFETIME seconds, and when it expires (epoch)."""
        expires = int(now) + LIFETIME
        me = self.identity
        claims = {
            "aud": resource,
            "iss": self.issuer,
            "iat": int(now),
            "nbf": int(now),
            "exp": expires,
            "tid": me.tenant,
            "oid": me.object_id,
            "sub": me.object_id,
            "appid": me.client_id,
            "idtyp": "app",
            "ver": "1.0",
        }
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "overhaul-1"}).encode())
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{header}.{body}".encode()
        return f"{header}.{body}.{_b64(self._sign(signing_input))}", expires

    def verify(self, token: str, now: float) -> dict[str, Any]:
        """The token's claims; TokenRefused unless overhaul signed it for its audience and it is within its life."""
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise TokenRefused("InvalidAuthenticationToken", "The access token is invalid.")
        header_part, body_part, signature_part = token.split(".")
        try:
            header = json.loads(_unb64(header_part))
            claims = json.loads(_unb64(body_part))
            signature = _unb64(signature_part)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise TokenRefused("InvalidAuthenticationToken", "The access token is invalid.") from None
        if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
            raise TokenRefused("InvalidAuthenticationToken", "The access token is invalid: not signed by this service.")
        if not hmac.compare_digest(signature, self._sign(f"{header_part}.{body_part}".encode())):
            raise TokenRefused("InvalidAuthenticationToken", "The access token has an invalid signature.")
        if claims.get("aud") not in AUDIENCES:
            raise TokenRefused(
                "InvalidAuthenticationToken",
                f"The access token has an invalid audience: it is for {str(claims.get('aud'))[:100]!r}, not "
                f"{AUDIENCE!r}.",
            )
        expires, not_before = claims.get("exp"), claims.get("nbf", 0)
        if not isinstance(expires, int) or not isinstance(not_before, int):
            raise TokenRefused("InvalidAuthenticationToken", "The access token is invalid: exp and nbf are required.")
        if now > expires + LEEWAY:
            raise TokenRefused(
                "ExpiredAuthenticationToken",
                "The access token expiry UTC time is earlier than current UTC time: get a new one.",
            )
        if now < not_before - LEEWAY:
            raise TokenRefused("InvalidAuthenticationToken", "The access token is not valid yet.")
        return claims
