"""Client tokens: HS256 JSON Web Tokens whose subject is the user id.

The application server mints them with the cluster's token secret (``grapevine token``
does the same); a node checks one in the client's hello before anything else. Only
HS256 is accepted: a token naming another algorithm (``none`` among them) is refused,
whatever its signature says. A token must expire (an ``exp`` claim): one without never
would, so a leaked one would be good forever; a node takes such tokens only when started
with ``--allow-tokens-without-exp``. Pure: the caller passes ``now`` (Unix seconds).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
from dataclasses import dataclass
from typing import Any

from .names import MAX_USER_SIZE, check_user

__all__ = ["MAX_USER_SIZE", "Claims", "TokenError", "check_user", "mint", "verify"]

#: Clock skew tolerated between the minting server and the node, seconds.
LEEWAY = 30.0
MAX_TOKEN_SIZE = 4096
_HEADER = {"alg": "HS256", "typ": "JWT"}


class TokenError(ValueError):
    """Why a token was refused (the reason goes into the client's error frame)."""


@dataclass(frozen=True, slots=True)
class Claims:
    user: str
    expires: float | None
    issued: float | None
    #: an application server's token (``"svc": true``): may listen to the reserved
    #: ``$upstream`` and ``$presence`` topics
    service: bool = False


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise TokenError("token is not base64url") from None


def _sign(secret: bytes, signing_input: bytes) -> bytes:
    return hmac.new(secret, signing_input, hashlib.sha256).digest()


def mint(secret: bytes, user: str, now: float, ttl: float | None = 3600.0,
         *, service: bool = False) -> str:
    """A token for ``user``, valid ``ttl`` seconds from ``now`` (None: no ``exp``, which
    nodes refuse unless started with ``--allow-tokens-without-exp``)."""
    if not secret:
        raise ValueError("the token secret is empty")
    claims: dict[str, Any] = {"sub": check_user(user), "iat": int(now)}
    if ttl is not None:
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0, got {ttl}")
        claims["exp"] = int(now + ttl)
    if service:
        claims["svc"] = True
    parts = [_b64(json.dumps(p, separators=(",", ":")).encode()) for p in (_HEADER, claims)]
    signing_input = ".".join(parts).encode()
    return f"{parts[0]}.{parts[1]}.{_b64(_sign(secret, signing_input))}"


#: why a token without ``exp`` is refused
NO_EXP = ("token has no exp claim: it would never expire (mint tokens with an exp, or "
          "start the node with --allow-tokens-without-exp)")


def verify(secret: bytes, token: object, now: float, *, without_exp: bool = False) -> Claims:
    """The token's claims, or :class:`TokenError` saying what is wrong with it; a token
    without ``exp`` is refused unless ``without_exp``."""
    if not isinstance(token, str) or not token:
        raise TokenError("token missing")
    if len(token) > MAX_TOKEN_SIZE:
        raise TokenError(f"token longer than {MAX_TOKEN_SIZE} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("token is not a JWT (header.payload.signature)")
    header, payload = (_json(_unb64(part)) for part in parts[:2])
    if header.get("alg") != "HS256":
        raise TokenError(f"token algorithm {header.get('alg')!r} is not HS256")
    expected = _sign(secret, f"{parts[0]}.{parts[1]}".encode())
    if not hmac.compare_digest(expected, _unb64(parts[2])):
        raise TokenError("token signature does not match")
    expires, issued, not_before = (_number(payload, k) for k in ("exp", "iat", "nbf"))
    if expires is None and not without_exp:
        raise TokenError(NO_EXP)
    if expires is not None and now > expires + LEEWAY:
        raise TokenError("token expired")
    if not_before is not None and now + LEEWAY < not_before:
        raise TokenError("token not valid yet")
    try:
        user = check_user(payload.get("sub"))  # type: ignore[arg-type]
    except ValueError as exc:
        raise TokenError(f"token subject: {exc}") from None
    return Claims(user, expires, issued, payload.get("svc") is True)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise TokenError("token part is not JSON") from None
    if not isinstance(value, dict):
        raise TokenError("token part is not a JSON object")
    return value


def _number(payload: dict[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(f"token claim {name!r} is not a number")
    try:
        number = float(value)  # an int beyond a float's range overflows
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):  # JSON as Python reads it may say NaN or Infinity:
        raise TokenError(f"token claim {name!r} is not a finite number")  # never expiring
    return number
