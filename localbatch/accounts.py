"""The accounts localbatch accepts: a well-known one, plus any named in LOCALBATCH_ACCOUNTS.

This module is also the one home of the well-known development accounts of the local stack:
localbatch's own and Azurite's (the default auto-storage account). Everything else (the
samples' ``common.local``, the tests, the benchmarks) imports them from here. It imports only
the standard library.
"""
from __future__ import annotations

import base64
import binascii
import os
import re

WELL_KNOWN_ACCOUNT_NAME = "localbatch"
# Published on purpose, like Azurite's devstoreaccount1 key: it protects nothing.
WELL_KNOWN_ACCOUNT_KEY = "MIFi2kO8kwSSKA1uy/WsjEDhbwVQBX6xm+RZ/uNAvcZk9D1JdqWAcq3KNI28KuZsRxEa2PxFSIIByWiP3Anw1Q=="
ACCOUNTS_ENV_VAR = "LOCALBATCH_ACCOUNTS"
# As Azure names Batch accounts: 3 to 24 lower-case letters and digits (also safe as a directory name).
ACCOUNT_NAME_PATTERN = re.compile(r"[a-z0-9]{3,24}")
# Under --location, the directory of every account other than the well-known one.
ACCOUNTS_DIRECTORY = "accounts"

AZURITE_ACCOUNT_NAME = "devstoreaccount1"
# Azurite's published development key: it protects nothing and is safe to ship.
AZURITE_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_DEFAULT_BLOB_ENDPOINT = f"http://127.0.0.1:10000/{AZURITE_ACCOUNT_NAME}"


def azurite_connection_string(blob_endpoint: str = AZURITE_DEFAULT_BLOB_ENDPOINT,
                              account_name: str = AZURITE_ACCOUNT_NAME,
                              account_key: str = AZURITE_ACCOUNT_KEY) -> str:
    """The connection string of an Azurite account (the well-known one by default) at ``blob_endpoint``."""
    return (f"DefaultEndpointsProtocol=http;AccountName={account_name};AccountKey={account_key};"
            f"BlobEndpoint={blob_endpoint};")


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
        if not ACCOUNT_NAME_PATTERN.fullmatch(name):
            raise AccountConfigError(f"{ACCOUNTS_ENV_VAR}: account name {name!r} must be 3 to 24 lower-case "
                                     "letters and digits, as Batch account names are")
        accounts[name] = decoded
    return accounts


def account_location(location: str, account: str) -> str:
    """The directory that holds one account's world (its state and its nodes).

    Each account is its own world, as separate Batch accounts are. The well-known account
    keeps the top of ``location`` (where all state lived before there were several accounts, so
    that state stays readable); every other one has ``location/accounts/<name>``.
    """
    if account == WELL_KNOWN_ACCOUNT_NAME:
        return location
    return os.path.join(location, ACCOUNTS_DIRECTORY, account)
