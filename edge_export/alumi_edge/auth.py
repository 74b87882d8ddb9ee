"""JWT bearer authentication (HS256 shared secret or RS256 public key) as FastAPI dependencies."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from alumi_edge.errors import ApiError
from alumi_edge.settings import EdgeSettings

LEEWAY_S = 5
CACHED_TOKENS = 256
_bearer = HTTPBearer(auto_error=False)


def _now() -> float:
    return time.time()


class TokenVerifier:
    """Checks signature, expiry (required), and audience/issuer when configured.

    A device's clients send the same token with every request until it expires, and a full check
    (base64, JSON, HMAC or RSA, claims) costs about 0.3 ms. The claims of the last ``CACHED_TOKENS``
    tokens that passed are kept by their exact string: signature, audience and issuer cannot change
    for the same bytes, and expiry is checked again on every use.
    """

    def __init__(self, settings: EdgeSettings):
        resolved = settings.jwt_key_and_algorithm()
        self.enabled = resolved is not None
        self._key, self._algorithm = resolved if resolved else ("", "")
        if self._algorithm == "RS256":
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            try:
                self._key = load_pem_public_key(self._key.encode("ascii"))
            except ValueError as exc:
                raise ValueError(f"ALUMI_EDGE_JWT_PUBLIC_KEY is not a PEM public key: {exc}") from exc
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer
        self.admin_scope = settings.admin_scope
        self._verified: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, token: str) -> dict[str, Any]:
        """Claims of a valid token; ApiError 401 naming what is wrong otherwise."""
        with self._lock:
            cached = self._verified.get(token)
            if cached is not None:
                claims, expires = cached
                if _now() <= expires + LEEWAY_S:
                    self._verified.move_to_end(token)
                    return dict(claims)
                del self._verified[token]
                raise ApiError(401, "token_expired", "bearer token has expired")
        claims = self._decode(token)
        with self._lock:
            self._verified[token] = (dict(claims), float(claims["exp"]))
            while len(self._verified) > CACHED_TOKENS:
                self._verified.popitem(last=False)
        return claims

    def _decode(self, token: str) -> dict[str, Any]:
        import jwt

        required = ["exp"] + (["aud"] if self.audience else []) + (["iss"] if self.issuer else [])
        try:
            return jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError as exc:
            raise ApiError(401, "token_expired", "bearer token has expired") from exc
        except jwt.InvalidSignatureError as exc:
            raise ApiError(401, "token_invalid", "bearer token signature does not verify") from exc
        except jwt.InvalidTokenError as exc:
            raise ApiError(401, "token_invalid", f"bearer token rejected: {exc}") from exc

    def has_scope(self, claims: dict[str, Any], scope: str) -> bool:
        """True when ``scope`` is in the 'scope' string, or the 'scopes'/'roles' list, of the claims."""
        granted: set[str] = set()
        if isinstance(claims.get("scope"), str):
            granted.update(claims["scope"].split())
        for key in ("scopes", "roles"):
            if isinstance(claims.get(key), list):
                granted.update(str(v) for v in claims[key])
        return scope in granted


async def _claims(request: Request) -> dict[str, Any]:
    verifier: TokenVerifier = request.app.state.verifier
    if not verifier.enabled:
        return {}
    credentials: HTTPAuthorizationCredentials | None = await _bearer(request)
    if credentials is None:
        raise ApiError(401, "token_missing", "an 'Authorization: Bearer <token>' header is required")
    return verifier.verify(credentials.credentials)


async def require_token(request: Request) -> dict[str, Any]:
    """Dependency: any valid token."""
    claims = await _claims(request)
    request.state.claims = claims
    return claims


async def require_admin(request: Request) -> dict[str, Any]:
    """Dependency: a valid token carrying the admin scope."""
    claims = await _claims(request)
    verifier: TokenVerifier = request.app.state.verifier
    if verifier.enabled and not verifier.has_scope(claims, verifier.admin_scope):
        raise ApiError(403, "forbidden", f"this endpoint needs the '{verifier.admin_scope}' scope")
    return claims
