"""Authentication: Shared Key (computed exactly as azure-batch's BatchSharedKeyAuthPolicy signs) and
Microsoft Entra ID bearer tokens (checked against the local token issuer's key).

A token is a credential: no part of it is ever logged, echoed or put in an error.
"""
from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Mapping, Optional
from urllib.parse import parse_qs

from .errors import BatchServiceError
from .identity.tokens import BATCH_AUDIENCE, LOCAL_TENANT_ID, TokenIssuer, TokenRejected

SHARED_KEY = "SharedKey"
ENTRA_ID = "AAD"  # the names of BatchAccount.allowedAuthenticationModes
AUTHENTICATION_MODES = (SHARED_KEY, ENTRA_ID)
# What the service says when a bearer token does not pass (Shared Key failures keep the longer wording).
BEARER_FAILED_MESSAGE = ("Server failed to authenticate the request. Make sure the value of Authorization header "
                         "is formed correctly.")

# How far a request's ocp-date may be from the server's clock, as on the service: a signed
# request captured and re-sent later is refused once it is this old.
MAX_CLOCK_SKEW = dt.timedelta(minutes=15)
SIGNED_STANDARD_HEADERS = (
    "content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
    "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range",
)


def string_to_sign(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str], account: str) -> str:
    """The canonical string the client signed (see BATCH_FACTS: Shared Key)."""
    lowered: dict[str, str] = {}
    ocp_headers = []
    for name, value in headers.items():
        if not value:
            continue
        lowered.setdefault(name.lower(), value)
        if "ocp-" in name.lower():
            ocp_headers.append((name.lower(), value))
    if method not in ("GET", "HEAD") and "content-length" not in lowered:
        lowered["content-length"] = "0"
    text = method + "\n" + "\n".join(lowered.get(h, "") for h in SIGNED_STANDARD_HEADERS) + "\n"
    for name, value in sorted(ocp_headers):
        text += f"{name}:{value}\n"
    text += f"/{account}{raw_path}"
    query = parse_qs(raw_query)
    for name in sorted(query):
        value = query[name][0]
        if value:
            text += f"\n{name}:{value}"
    return text


def sign(key: bytes, text: str) -> str:
    return base64.b64encode(hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()).decode("ascii")


@dataclass
class Authenticator:
    """Who may call: the accounts' shared keys, and bearer tokens of ``issuer`` for the Batch audience.

    ``allowed_modes`` is the accounts' ``allowedAuthenticationModes``: ``{"AAD"}`` refuses shared key,
    ``{"SharedKey"}`` refuses tokens. Without an issuer, tokens cannot be checked and are refused.
    """
    accounts: Mapping[str, list[bytes]]
    account_name: str
    issuer: Optional[TokenIssuer] = None
    allowed_modes: frozenset[str] = field(default_factory=lambda: frozenset(AUTHENTICATION_MODES))

    def authenticate(self, method: str, raw_path: str, raw_query: str, headers: Mapping[str, str]) -> str:
        """Return the authenticated account name, or raise AuthenticationFailed."""
        authorization = headers.get("Authorization", "")
        if authorization.partition(" ")[0].lower() == "bearer":
            return self._authenticate_bearer(authorization)
        if authorization and SHARED_KEY not in self.allowed_modes:
            raise _failed("The specified type of authentication SharedKey is not allowed for this account.")
        return authenticate(method, raw_path, raw_query, headers, self.accounts)

    def _authenticate_bearer(self, authorization: str) -> str:
        if ENTRA_ID not in self.allowed_modes:
            raise _failed("The specified type of authentication AAD is not allowed for this account.")
        token = authorization.partition(" ")[2].strip()
        if not token:
            raise _bearer_failed("The authorization header is missing the access token.")
        if self.issuer is None:
            raise _bearer_failed("This localbatch has no token issuer, so it cannot verify access tokens.")
        try:
            self.issuer.verify(token, BATCH_AUDIENCE)
        except TokenRejected as rejected:
            raise _bearer_failed(rejected.reason) from None
        return self.account_name


def _bearer_failed(reason: str) -> BatchServiceError:
    """401 with the service's challenge: where to get a token (the tenant), and for which resource."""
    challenge = (f"Bearer authorization_uri=https://login.microsoftonline.com/{LOCAL_TENANT_ID}/oauth2/authorize "
                 f"resource_id={BATCH_AUDIENCE}")
    return BatchServiceError("AuthenticationFailed", BEARER_FAILED_MESSAGE, values={"AuthenticationErrorDetail": reason},
                             status=401, headers={"WWW-Authenticate": challenge})


def authenticate(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str],
                 accounts: Mapping[str, list[bytes]]) -> str:
    """Return the account a Shared Key request is signed for, or raise AuthenticationFailed.

    The reason goes into the error's details; the signature itself is never echoed or logged.
    """
    authorization = headers.get("Authorization", "")
    if not authorization:
        raise _failed("The Authorization header is missing.")
    scheme, _, credential = authorization.partition(" ")
    if scheme != "SharedKey" or ":" not in credential:
        raise _failed("The Authorization header must have the form 'SharedKey account:signature'.")
    account, _, signature = credential.partition(":")
    keys = accounts.get(account)
    if not keys:
        raise _failed(f"The account '{account}' is not known to this emulator.")
    if not headers.get("ocp-date") and not headers.get("Date"):
        raise _failed("The request carries neither an ocp-date nor a Date header.")
    expected_text = string_to_sign(method, raw_path, raw_query, headers, account)
    # Compare against every key without stopping early, so timing tells nothing.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(sign(key, expected_text), signature)
    if not matched:
        raise _failed("The MAC signature found in the HTTP request is not the same as any computed signature.")
    _check_date(headers.get("ocp-date") or headers.get("Date") or "")
    return account


def _check_date(text: str) -> None:
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        raise _failed("The request's ocp-date is not a date in RFC 1123 format.") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    skew = abs(dt.datetime.now(dt.timezone.utc) - moment)
    if skew > MAX_CLOCK_SKEW:
        raise _failed(f"The request's ocp-date is {int(skew.total_seconds())} s away from the server's clock; "
                      f"it must be within {int(MAX_CLOCK_SKEW.total_seconds() // 60)} minutes.")


def _failed(reason: str) -> BatchServiceError:
    return BatchServiceError("AuthenticationFailed", values={"AuthenticationErrorDetail": reason})
