"""JWT bearer authentication (HS256 shared secret or RS256 public key) as FastAPI dependencies."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from alumi_edge.errors import ApiError
from alumi_edge.settings import EdgeSettings

LEEWAY_S = 5
_bearer = HTTPBearer(auto_error=False)


class TokenVerifier:
    """Checks signature, expiry (required), and audience/issuer when configured."""

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

    def verify(self, token: str) -> dict[str, Any]:
        """Claims of a valid token; ApiError 401 naming what is wrong otherwise."""
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
