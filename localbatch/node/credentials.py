"""What a node keeps of its users' credentials and its own identity.

A node user's password is kept only as a salted scrypt hash (as /etc/shadow keeps a hash), so
the state database never holds it; the node's SSH host key is an ed25519 private key that lives
with the node for its whole life, so clients can pin it.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Optional

import asyncssh

_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, **_SCRYPT)
    return f"scrypt${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def password_matches(password: str, stored: Optional[str]) -> bool:
    if not stored:
        return False
    try:
        _, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), **_SCRYPT)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def new_host_key() -> str:
    """A new ed25519 host key, in OpenSSH private key format."""
    return asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode("ascii")


def parse_public_key(text: Optional[str]) -> Optional[asyncssh.SSHKey]:
    """An OpenSSH public key line as a key, or None when it is absent or not a key."""
    if not text:
        return None
    try:
        return asyncssh.import_public_key(text.strip())
    except (asyncssh.KeyImportError, ValueError):
        return None
