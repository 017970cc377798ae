"""The accounts localbatch accepts: a well-known one, plus any named in LOCALBATCH_ACCOUNTS."""
from __future__ import annotations

import base64
import binascii
import os

WELL_KNOWN_ACCOUNT_NAME = "localbatch"
# Published on purpose, like Azurite's devstoreaccount1 key: it protects nothing.
WELL_KNOWN_ACCOUNT_KEY = "MIFi2kO8kwSSKA1uy/WsjEDhbwVQBX6xm+RZ/uNAvcZk9D1JdqWAcq3KNI28KuZsRxEa2PxFSIIByWiP3Anw1Q=="
ACCOUNTS_ENV_VAR = "LOCALBATCH_ACCOUNTS"


class AccountConfigError(ValueError):
    """LOCALBATCH_ACCOUNTS could not be read."""


def load_accounts(environ: dict | None = None) -> dict[str, list[bytes]]:
    """Account name -> its decoded keys.

    LOCALBATCH_ACCOUNTS has the form Azurite uses: ``name:key1[:key2];name2:key1``.
    """
    environ = os.environ if environ is None else environ
    accounts = {WELL_KNOWN_ACCOUNT_NAME: [base64.b64decode(WELL_KNOWN_ACCOUNT_KEY)]}
    for entry in filter(None, (part.strip() for part in environ.get(ACCOUNTS_ENV_VAR, "").split(";"))):
        name, _, keys = entry.partition(":")
        if not name or not keys:
            raise AccountConfigError(f"{ACCOUNTS_ENV_VAR}: entry for account {name or '?'!r} must look like name:base64key")
        decoded = []
        for position, key in enumerate(keys.split(":"), start=1):
            try:
                decoded.append(base64.b64decode(key, validate=True))
            except binascii.Error:
                raise AccountConfigError(
                    f"{ACCOUNTS_ENV_VAR}: key {position} of account {name!r} is not valid base64") from None
        accounts[name] = decoded
    return accounts
