"""Sample 3's task: download a client-side encrypted blob and print what it decrypts to.

It runs on a node of a pool with a user-assigned managed identity. ``ManagedIdentityCredential``
gets that identity's tokens from the node (IMDS on Azure); the blob's metadata names the Key
Vault key that wrapped its content key, and the vault unwraps it only for a caller with a role
that allows it. Nothing else on the node, and nothing in Storage, can read the secret.

    python decrypt_secret_task.py --blob-url SAS_URL --client-id CLIENT_ID [--skip-challenge-resource-check]

``--skip-challenge-resource-check`` is for the local stack only (see README): its vault is not
under ``vault.azure.net``, so the Key Vault client's check that the challenge names the vault's
domain must be switched off there.
"""

import argparse
import sys

from azure.core.exceptions import HttpResponseError
from azure.identity import ManagedIdentityCredential
from azure.keyvault.keys.crypto import CryptographyClient
from azure.storage.blob import BlobClient

from key_vault_key_wrapper import KeyVaultKeyWrapper


def download_decrypted_blob(blob_url: str, credential: ManagedIdentityCredential,
                            verify_challenge_resource: bool = True) -> bytes:
    """Download the blob and decrypt it, resolving its key through Key Vault; refuse plaintext blobs."""

    def resolve_key(key_id: str) -> KeyVaultKeyWrapper:
        return KeyVaultKeyWrapper(CryptographyClient(key_id, credential,
                                                     verify_challenge_resource=verify_challenge_resource))

    blob = BlobClient.from_blob_url(blob_url, require_encryption=True, key_resolver_function=resolve_key,
                                    encryption_version="2.0")
    return blob.download_blob().readall()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blob-url", required=True, help="read-only SAS URL of the encrypted blob")
    parser.add_argument("--client-id", required=True, help="client id of the pool's user-assigned identity")
    parser.add_argument("--skip-challenge-resource-check", action="store_true", help="local stack only")
    arguments = parser.parse_args()
    credential = ManagedIdentityCredential(client_id=arguments.client_id)
    try:
        secret = download_decrypted_blob(arguments.blob_url, credential,
                                         verify_challenge_resource=not arguments.skip_challenge_resource_check)
    except HttpResponseError as error:
        print(f"cannot decrypt the blob: {error.status_code} {error.reason}: {error.message.splitlines()[0]}",
              file=sys.stderr)
        return 1
    print("Decrypted secret:")
    print(secret.decode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
