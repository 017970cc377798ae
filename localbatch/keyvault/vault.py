"""The vault: RSA keys and secrets with versions, soft delete and purge, kept in SQLite.

Only the subset sample 3 and its task use (see README, "Key Vault on the local stack"). Each
change is committed before the method returns, so what a client was told is on disk. Objects
are stored without the vault's URL; `views` puts the URL the client used in front of them.
Private keys never leave this module: wrap and unwrap happen here, as in a real vault.
"""
from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..store import StateDatabaseError

DATABASE_NAME = "keyvault.sqlite3"
RECOVERABLE_DAYS = 90
RECOVERY_LEVEL = "Recoverable+Purgeable"
RSA_KEY_SIZES = (2048, 3072, 4096)
KEY_OPERATIONS = ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey", "import", "export")
WRAP_ALGORITHMS = ("RSA-OAEP-256", "RSA-OAEP", "RSA1_5")
_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_NOT_FOUND_HINT = (" If you recently deleted this {kind} you may be able to recover it using the correct recovery "
                   "command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182")


class VaultError(Exception):
    """An error a real vault answers with: status, code, message (and an inner code)."""

    def __init__(self, status: int, code: str, message: str, inner_code: Optional[str] = None):
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.inner_code = inner_code

    def body(self) -> dict:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner_code:
            error["innererror"] = {"code": self.inner_code}
        return {"error": error}


def bad_parameter(message: str) -> VaultError:
    return VaultError(400, "BadParameter", message)


def _not_found(kind: str, name: str) -> VaultError:
    code = "KeyNotFound" if kind == "key" else "SecretNotFound"
    return VaultError(404, code, f"A {kind} with (name/id) {name} was not found in this key vault."
                      + _NOT_FOUND_HINT.format(kind=kind))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _from_b64url(text: Any, field: str) -> bytes:
    if not isinstance(text, str) or not text:
        raise bad_parameter(f"The parameter '{field}' is missing or is not a base64url string.")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise bad_parameter(f"The parameter '{field}' is not a valid base64url string.") from None


def _padding(algorithm: Any) -> padding.AsymmetricPadding:
    if algorithm == "RSA-OAEP-256":
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    if algorithm == "RSA-OAEP":
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    if algorithm == "RSA1_5":
        return padding.PKCS1v15()
    raise bad_parameter(f"Invalid algorithm '{algorithm}'. Supported algorithms for wrap and unwrap: "
                        + ", ".join(WRAP_ALGORITHMS) + ".")


def _object(request: dict, field: str) -> dict:
    """``request[field]`` when it is a JSON object (absent: empty); anything else is a BadParameter."""
    value = request.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_parameter(f"The parameter '{field}' must be a JSON object.")
    return value


def _tags(request: dict) -> dict:
    tags = _object(request, "tags")
    if not all(isinstance(value, str) for value in tags.values()):
        raise bad_parameter("Tag values must be strings.")
    return dict(tags)


def _attributes(request: dict) -> dict:
    requested = _object(request, "attributes")
    for field in ("exp", "nbf"):
        if requested.get(field) is not None and (not isinstance(requested[field], int)
                                                 or isinstance(requested[field], bool)):
            raise bad_parameter(f"The attribute '{field}' must be a Unix time in seconds.")
    if not isinstance(requested.get("enabled", True), bool):
        raise bad_parameter("The attribute 'enabled' must be true or false.")
    return requested


def check_name(kind: str, name: str) -> None:
    if not _NAME.match(name):
        raise bad_parameter(f"The request URI contains an invalid name: {name!r}. A {kind} name may contain only "
                            "0-9, a-z, A-Z and -, and be 1 to 127 characters long.")


@dataclass
class KeyVersion:
    name: str
    version: str
    key_ops: list[str]
    attributes: dict
    tags: dict
    private_pem: str

    def public_numbers(self) -> rsa.RSAPublicNumbers:
        return self._private().public_key().public_numbers()

    def _private(self) -> rsa.RSAPrivateKey:
        key = serialization.load_pem_private_key(self.private_pem.encode("ascii"), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key

    def record(self) -> dict:
        return {"name": self.name, "version": self.version, "key_ops": self.key_ops, "attributes": self.attributes,
                "tags": self.tags, "private_pem": self.private_pem}

    def wrap(self, algorithm: Any, value: bytes) -> bytes:
        self._check_usable("wrapKey", refuse_expired=True)
        return self._private().public_key().encrypt(value, _padding(algorithm))

    def unwrap(self, algorithm: Any, value: bytes) -> bytes:
        # A vault still unwraps with an expired key (so old data stays readable); not with a disabled one.
        self._check_usable("unwrapKey", refuse_expired=False)
        try:
            return self._private().decrypt(value, _padding(algorithm))
        except ValueError:
            raise bad_parameter("The value could not be unwrapped with this key (wrong key, algorithm or "
                                "corrupted ciphertext).") from None

    def _check_usable(self, operation: str, refuse_expired: bool) -> None:
        if operation not in self.key_ops:
            raise VaultError(403, "Forbidden", f"Operation {operation} is not permitted on this key.",
                             "KeyOperationForbidden")
        if not self.attributes.get("enabled", True):
            raise VaultError(403, "Forbidden", "Operation is not allowed on a disabled key.", "KeyDisabled")
        now = int(time.time())
        if refuse_expired and self.attributes.get("exp") is not None and now >= self.attributes["exp"]:
            raise VaultError(403, "Forbidden", f"Operation {operation} is not allowed on an expired key.",
                             "KeyExpired")
        if self.attributes.get("nbf") is not None and now < self.attributes["nbf"]:
            raise VaultError(403, "Forbidden", f"Operation {operation} is not allowed before the key's "
                                               "activation date.", "KeyNotYetValid")


class Vault:
    """Keys and secrets of the local vault, persisted in `<state directory>/keyvault.sqlite3`."""

    def __init__(self, state_directory: str):
        os.makedirs(state_directory, exist_ok=True)
        self.path = os.path.join(state_directory, DATABASE_NAME)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript("""
                CREATE TABLE IF NOT EXISTS objects (
                    kind TEXT NOT NULL,      -- key | secret
                    name TEXT NOT NULL,      -- compared case-insensitively, as Key Vault does
                    body TEXT NOT NULL,      -- {"versions": [...], "deleted": {...} | null}
                    PRIMARY KEY (kind, name)
                ) WITHOUT ROWID;
            """)
        except sqlite3.Error as exc:
            raise StateDatabaseError(f"cannot open the vault's database {self.path}: {exc}") from exc
        os.chmod(self.path, 0o600)  # it holds private keys

    def close(self) -> None:
        self._db.close()

    # ---- storage ------------------------------------------------------------------------
    def _load(self, kind: str, name: str) -> Optional[dict]:
        row = self._db.execute("SELECT body FROM objects WHERE kind=? AND name=?", (kind, name.lower())).fetchone()
        return json.loads(row[0]) if row else None

    def _save(self, kind: str, name: str, body: Optional[dict]) -> None:
        if body is None:
            self._db.execute("DELETE FROM objects WHERE kind=? AND name=?", (kind, name.lower()))
        else:
            self._db.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?)", (kind, name.lower(), json.dumps(body)))

    def _live(self, kind: str, name: str) -> dict:
        check_name(kind, name)
        body = self._load(kind, name)
        if body is None or body.get("deleted"):
            raise _not_found(kind, name)
        return body

    # ---- keys ---------------------------------------------------------------------------
    def create_key(self, name: str, request: dict) -> KeyVersion:
        check_name("key", name)
        kty = request.get("kty")
        if kty not in ("RSA", "RSA-HSM"):
            raise bad_parameter(f"Unsupported key type '{kty}': the local vault makes RSA keys only." if kty
                                else "The parameter 'kty' is required.")
        size = request.get("key_size") or 2048
        if isinstance(size, bool) or size not in RSA_KEY_SIZES:
            raise bad_parameter(f"Invalid key size {size}; RSA keys may be 2048, 3072 or 4096 bits.")
        if request.get("public_exponent") not in (None, 65537):
            raise bad_parameter("The local vault makes RSA keys with the public exponent 65537 only.")
        key_ops = request.get("key_ops") or list(KEY_OPERATIONS[:6])
        if not isinstance(key_ops, list) or not all(isinstance(op, str) for op in key_ops):
            raise bad_parameter("The parameter 'key_ops' must be a list of key operations.")
        unknown = [op for op in key_ops if op not in KEY_OPERATIONS]
        if unknown:
            raise bad_parameter(f"Invalid key operation(s): {', '.join(map(str, unknown))}.")
        now = int(time.time())
        requested = _attributes(request)
        tags = _tags(request)
        attributes = {"enabled": requested.get("enabled", True), "created": now, "updated": now,
                      "recoveryLevel": RECOVERY_LEVEL, "recoverableDays": RECOVERABLE_DAYS, "exportable": False}
        for optional in ("exp", "nbf"):
            if requested.get(optional) is not None:
                attributes[optional] = requested[optional]
        private = rsa.generate_private_key(public_exponent=65537, key_size=size)
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode("ascii")
        version = KeyVersion(name, uuid.uuid4().hex, list(key_ops), attributes, tags, pem)
        with self._lock:
            body = self._load("key", name) or {"versions": [], "deleted": None}
            if body.get("deleted"):
                raise VaultError(409, "Conflict", f"Key {name} is currently in a deleted but recoverable state, and "
                                 "its name cannot be reused; in this state, the key can only be recovered or purged.",
                                 "ObjectIsDeletedButRecoverable")
            body["versions"].append(version.record())
            self._save("key", name, body)
        return version

    def get_key(self, name: str, version: str = "") -> KeyVersion:
        body = self._live("key", name)
        for record in reversed(body["versions"]):
            if not version or record["version"] == version:
                return KeyVersion(**record)
        raise _not_found("key", f"{name}/{version}")

    def key_versions(self, name: str) -> list[KeyVersion]:
        return [KeyVersion(**record) for record in self._live("key", name)["versions"]]

    def list_keys(self, deleted: bool = False) -> list[tuple[KeyVersion, dict]]:
        """The latest version of every key (or of every deleted key), by name, with its deletion record."""
        rows = self._db.execute("SELECT body FROM objects WHERE kind='key' ORDER BY name").fetchall()
        bodies = [json.loads(row[0]) for row in rows]
        return [(KeyVersion(**body["versions"][-1]), body.get("deleted") or {}) for body in bodies
                if bool(body.get("deleted")) == deleted]

    def delete_key(self, name: str) -> tuple[KeyVersion, dict]:
        with self._lock:
            body = self._live("key", name)
            body["deleted"] = _deletion_record()
            self._save("key", name, body)
        return KeyVersion(**body["versions"][-1]), body["deleted"]

    def get_deleted_key(self, name: str) -> tuple[KeyVersion, dict]:
        check_name("key", name)
        body = self._load("key", name)
        if body is None or not body.get("deleted"):
            raise VaultError(404, "KeyNotFound", f"Deleted Key not found: {name}")
        return KeyVersion(**body["versions"][-1]), body["deleted"]

    def purge_deleted_key(self, name: str) -> None:
        with self._lock:
            self.get_deleted_key(name)
            self._save("key", name, None)

    # ---- secrets ------------------------------------------------------------------------
    def set_secret(self, name: str, request: dict) -> dict:
        check_name("secret", name)
        value = request.get("value")
        if not isinstance(value, str):
            raise bad_parameter("The parameter 'value' is required and must be a string.")
        now = int(time.time())
        requested = _attributes(request)
        tags = _tags(request)
        if request.get("contentType") is not None and not isinstance(request["contentType"], str):
            raise bad_parameter("The parameter 'contentType' must be a string.")
        attributes = {"enabled": requested.get("enabled", True), "created": now, "updated": now,
                      "recoveryLevel": RECOVERY_LEVEL, "recoverableDays": RECOVERABLE_DAYS}
        for optional in ("exp", "nbf"):
            if requested.get(optional) is not None:
                attributes[optional] = requested[optional]
        record = {"name": name, "version": uuid.uuid4().hex, "value": value, "attributes": attributes, "tags": tags}
        if request.get("contentType") is not None:
            record["contentType"] = request["contentType"]
        with self._lock:
            body = self._load("secret", name) or {"versions": [], "deleted": None}
            if body.get("deleted"):
                raise VaultError(409, "Conflict", f"Secret {name} is currently in a deleted but recoverable state, "
                                 "and its name cannot be reused; in this state, the secret can only be recovered "
                                 "or purged.", "ObjectIsDeletedButRecoverable")
            body["versions"].append(record)
            self._save("secret", name, body)
        return record

    def get_secret(self, name: str, version: str = "") -> dict:
        body = self._live("secret", name)
        for record in reversed(body["versions"]):
            if not version or record["version"] == version:
                if not record["attributes"].get("enabled", True):
                    raise VaultError(403, "Forbidden", "Operation get is not allowed on a disabled secret.",
                                     "SecretDisabled")
                return record
        raise _not_found("secret", f"{name}/{version}")

    def delete_secret(self, name: str) -> tuple[dict, dict]:
        with self._lock:
            body = self._live("secret", name)
            body["deleted"] = _deletion_record()
            self._save("secret", name, body)
        return body["versions"][-1], body["deleted"]

    def get_deleted_secret(self, name: str) -> tuple[dict, dict]:
        check_name("secret", name)
        body = self._load("secret", name)
        if body is None or not body.get("deleted"):
            raise VaultError(404, "SecretNotFound", f"Deleted Secret not found: {name}")
        return body["versions"][-1], body["deleted"]

    def purge_deleted_secret(self, name: str) -> None:
        with self._lock:
            self.get_deleted_secret(name)
            self._save("secret", name, None)


def _deletion_record() -> dict:
    now = int(time.time())
    return {"deletedDate": now, "scheduledPurgeDate": now + RECOVERABLE_DAYS * 86400}


def wrap_or_unwrap(key: KeyVersion, operation: str, request: dict) -> bytes:
    """Run `wrapkey` or `unwrapkey` with the body's `alg` and base64url `value`."""
    value = _from_b64url(request.get("value"), "value")
    if operation == "wrapkey":
        return key.wrap(request.get("alg"), value)
    return key.unwrap(request.get("alg"), value)


def public_jwk(key: KeyVersion) -> dict:
    """The key's public half as Key Vault returns it (no private parameters, ever)."""
    numbers = key.public_numbers()
    return {"kty": "RSA", "key_ops": key.key_ops, "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": _b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big"))}


def b64url(data: bytes) -> str:
    return _b64url(data)
