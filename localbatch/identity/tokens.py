"""The local token issuer: Entra ID-shaped access tokens (RS256 JWTs), their keys, and their checks.

Python API (what localbatch, and the parts built on it, call)::

    issuer = TokenIssuer.open(directory)            # keys kept in DIRECTORY/signing-key.pem (0600)
    issuer.register(ManagedIdentity(...))           # a user-assigned identity tokens can be asked for
    identity = issuer.find_identity(client_id=...)  # or object_id= / resource_id=; None: the developer's
    token = issuer.issue(BATCH_AUDIENCE, identity)  # -> IssuedToken(access_token, expires_on, ...)
    claims = issuer.verify(token.access_token, BATCH_AUDIENCE)  # raises TokenRejected(reason)
    issuer.jwks()                                   # {"keys": [...]}, what the JWKS endpoint serves

Tokens carry the claims real v1 Entra tokens carry (``aud``, ``iss`` = ``https://sts.windows.net/<tid>/``,
``iat``, ``nbf``, ``exp``, ``tid``, ``oid``, ``sub``, ``appid``, ``appidacr``, ``idtyp``, ``ver``, and
``xms_mirid`` for a managed identity), so Azurite's ``--oauth basic`` check accepts them as it accepts
real ones. A token's text is a credential: nothing here logs or prints any part of it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

# The local stack's tenant: a fixed, published id, like the development account keys.
LOCAL_TENANT_ID = "72f988bf-0000-4000-8000-00000000b47c"
ISSUER_PREFIX = "https://sts.windows.net/"
BATCH_AUDIENCE = "https://batch.core.windows.net/"
STORAGE_AUDIENCE = "https://storage.azure.com"
KEY_VAULT_AUDIENCE = "https://vault.azure.net"
ARM_AUDIENCE = "https://management.azure.com/"
KNOWN_AUDIENCES = (BATCH_AUDIENCE, STORAGE_AUDIENCE, KEY_VAULT_AUDIENCE, ARM_AUDIENCE)
TOKEN_LIFETIME_SECONDS = 3600 * 24  # what managed identity tokens live for on Azure
CLOCK_SKEW_SECONDS = 300            # the leeway Entra ID's own validators allow
SIGNING_KEY_FILE = "signing-key.pem"
SUBSCRIPTION_ID = "00000000-0000-4000-8000-00000000b47c"
RESOURCE_GROUP = "localbatch"


def tenant_issuer(tenant_id: str = LOCAL_TENANT_ID) -> str:
    """The ``iss`` of a v1 access token of ``tenant_id``."""
    return f"{ISSUER_PREFIX}{tenant_id}/"


@dataclass(frozen=True)
class ManagedIdentity:
    """An identity tokens are issued for: the developer's (system-assigned) or a user-assigned one."""
    name: str
    client_id: str
    principal_id: str                   # the object id (``oid``) of its service principal
    resource_id: Optional[str] = None   # an ARM id; only user-assigned identities have one
    tenant_id: str = LOCAL_TENANT_ID

    @property
    def user_assigned(self) -> bool:
        return self.resource_id is not None


def user_assigned_resource_id(name: str) -> str:
    """The ARM id of a user-assigned identity ``name`` in the local subscription and resource group."""
    return (f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{RESOURCE_GROUP}"
            f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}")


# What DefaultAzureCredential gets on the local stack when it names no identity.
DEVELOPER_IDENTITY = ManagedIdentity("localbatch-developer", client_id="0bd0bd3c-0000-4000-8000-00000000d0e1",
                                     principal_id="0bd0bd3c-0000-4000-8000-00000000d0e2")
# A well-known user-assigned identity (e.g. for a pool's managed identity), registered by default.
WELL_KNOWN_USER_ASSIGNED_IDENTITY = ManagedIdentity(
    "localbatch-identity", client_id="5e1f0d3c-0000-4000-8000-00000000a001",
    principal_id="5e1f0d3c-0000-4000-8000-00000000a002",
    resource_id=user_assigned_resource_id("localbatch-identity"))


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_on: int      # seconds since the epoch
    expires_in: int
    resource: str
    client_id: str
    token_type: str = "Bearer"


class TokenRejected(Exception):
    """A token that does not pass; ``reason`` says why in the service's words, never quoting the token."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class TokenIssuer:
    signing_key: rsa.RSAPrivateKey
    tenant_id: str = LOCAL_TENANT_ID
    identities: dict[str, ManagedIdentity] = field(default_factory=dict)  # client id -> identity
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, directory: Path | str, tenant_id: str = LOCAL_TENANT_ID) -> "TokenIssuer":
        """The issuer whose signing key is kept in ``directory`` (made on first use, 0600)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / SIGNING_KEY_FILE
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(descriptor, data)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            os.replace(temporary, path)
        issuer = cls(key, tenant_id)
        issuer.register(DEVELOPER_IDENTITY)
        issuer.register(WELL_KNOWN_USER_ASSIGNED_IDENTITY)
        return issuer

    # ---- identities ----------------------------------------------------------------------
    def register(self, identity: ManagedIdentity) -> ManagedIdentity:
        """Make ``identity`` one tokens can be issued for (by client id, principal id or resource id)."""
        with self._lock:
            self.identities[identity.client_id.lower()] = identity
        return identity

    def find_identity(self, client_id: Optional[str] = None, object_id: Optional[str] = None,
                      resource_id: Optional[str] = None) -> Optional[ManagedIdentity]:
        """The registered identity with this client id, object (principal) id or resource id.

        With none given: the developer's identity. None when nothing registered matches.
        """
        if not (client_id or object_id or resource_id):
            return DEVELOPER_IDENTITY
        with self._lock:
            candidates = list(self.identities.values())
        for identity in candidates:
            if client_id and identity.client_id.lower() == client_id.lower():
                return identity
            if object_id and identity.principal_id.lower() == object_id.lower():
                return identity
            if resource_id and identity.resource_id and identity.resource_id.lower() == resource_id.lower():
                return identity
        return None

    # ---- issuing -------------------------------------------------------------------------
    @property
    def issuer(self) -> str:
        return tenant_issuer(self.tenant_id)

    @property
    def key_id(self) -> str:
        """The ``kid`` (and ``x5t``-style thumbprint) of the signing key: SHA-1 of its public key."""
        public = self.signing_key.public_key().public_bytes(serialization.Encoding.DER,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return _b64url(hashlib.sha1(public).digest())

    def issue(self, audience: str, identity: ManagedIdentity = DEVELOPER_IDENTITY,
              lifetime_seconds: int = TOKEN_LIFETIME_SECONDS, now: Optional[float] = None,
              **extra_claims: Any) -> IssuedToken:
        """A signed access token for ``audience`` (a resource, e.g. ``BATCH_AUDIENCE``) as ``identity``.

        ``extra_claims`` override or add claims (tests use them to make tokens that must be refused).
        """
        issued_at = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "aud": audience, "iss": tenant_issuer(identity.tenant_id),
            "iat": issued_at, "nbf": issued_at, "exp": issued_at + lifetime_seconds,
            "aio": _b64url(os.urandom(24)), "appid": identity.client_id, "appidacr": "2",
            "idp": tenant_issuer(identity.tenant_id), "idtyp": "app", "oid": identity.principal_id,
            "rh": _b64url(os.urandom(16)), "sub": identity.principal_id, "tid": identity.tenant_id,
            "uti": _b64url(os.urandom(16)), "ver": "1.0",
        }
        if identity.resource_id:
            claims["xms_mirid"] = identity.resource_id
        claims.update(extra_claims)
        header = {"typ": "JWT", "alg": "RS256", "x5t": self.key_id, "kid": self.key_id}
        token = self.sign(header, claims)
        return IssuedToken(token, int(claims["exp"]), int(claims["exp"]) - issued_at, audience, identity.client_id)

    def sign(self, header: dict, claims: dict) -> str:
        """``header.claims.signature`` with this issuer's key (RS256), whatever the header says."""
        signing_input = f"{_b64url(_json(header))}.{_b64url(_json(claims))}".encode("ascii")
        signature = self.signing_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input.decode('ascii')}.{_b64url(signature)}"

    def jwks(self) -> dict:
        """The JSON Web Key Set that publishes the signing key, as Entra ID's ``discovery/keys`` does."""
        numbers = self.signing_key.public_key().public_numbers()
        return {"keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.key_id, "x5t": self.key_id,
            "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": _b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
            "issuer": f"{ISSUER_PREFIX}{{tenantid}}/",
        }]}

    # ---- verifying -----------------------------------------------------------------------
    def verify(self, token: str, audiences: Iterable[str] | str, now: Optional[float] = None) -> dict:
        """The claims of ``token`` if it is one of ours, for one of ``audiences``, valid now; else
        raise ``TokenRejected``. Checks: form, ``alg`` (RS256 only: ``none`` and HMAC are refused),
        ``kid``, signature, issuer, tenant, audience (exactly, trailing slash included), nbf and exp."""
        accepted = (audiences,) if isinstance(audiences, str) else tuple(audiences)
        parts = token.split(".")
        if len(parts) != 3 or not all(parts[:2]):
            raise TokenRejected("The access token is not a well-formed JWT.")
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2])
        except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
            raise TokenRejected("The access token is not a well-formed JWT.") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise TokenRejected("The access token is not a well-formed JWT.")
        if header.get("alg") != "RS256":
            raise TokenRejected("The access token's signing algorithm is not accepted; tokens must be signed with RS256.")
        if header.get("kid") != self.key_id:
            raise TokenRejected("The access token is signed with a key that is not one of the issuer's published keys.")
        try:
            self.signing_key.public_key().verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"),
                                                 padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            raise TokenRejected("The access token signature is invalid.") from None
        if claims.get("iss") != self.issuer:
            raise TokenRejected(f"The access token is from an issuer this service does not trust; "
                                f"it must be '{self.issuer}'.")
        if claims.get("tid") != self.tenant_id:
            raise TokenRejected("The access token is from the wrong tenant.")
        if claims.get("aud") not in accepted:
            raise TokenRejected(f"The access token has been obtained from wrong audience or resource "
                                f"'{_printable(claims.get('aud'))}'. It should exactly match (including forward "
                                f"slash) with one of the allowed audiences {', '.join(repr(a) for a in accepted)}.")
        moment = time.time() if now is None else now
        not_before, expires = claims.get("nbf"), claims.get("exp")
        if not isinstance(not_before, (int, float)) or not isinstance(expires, (int, float)):
            raise TokenRejected("The access token has no valid lifetime (nbf and exp).")
        if moment + CLOCK_SKEW_SECONDS < not_before:
            raise TokenRejected(f"The access token is not yet valid: it is valid from {_utc(not_before)}, and the "
                                f"current UTC time is {_utc(moment)}.")
        if moment - CLOCK_SKEW_SECONDS >= expires:
            raise TokenRejected(f"The access token expiry UTC time '{_utc(expires)}' is earlier than current UTC "
                                f"time '{_utc(moment)}'.")
        return claims


def _json(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _printable(value: object) -> str:
    text = str(value)
    return text if len(text) <= 200 and text.isprintable() else text[:200].encode("unicode_escape").decode("ascii")


def new_identity(name: str) -> ManagedIdentity:
    """A fresh user-assigned identity called ``name`` (random client and principal ids)."""
    return ManagedIdentity(name, str(uuid.uuid4()), str(uuid.uuid4()), user_assigned_resource_id(name))
