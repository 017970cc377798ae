"""A program the managed identity tests run as a task on a node (not a test module).

    python managed_identity_probe.py CLIENT_ID KEY_ID WRAPPED_KEY_BASE64

It asks the node for a Key Vault token of the identity CLIENT_ID (empty: let the node choose)
with azure-identity's ManagedIdentityCredential, then asks the vault to unwrap WRAPPED_KEY. It
prints one line: ``NO TOKEN: ...``, ``REFUSED: <status> <code>`` or ``UNWRAPPED: <hex>``.
"""
import base64
import sys

from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.identity import CredentialUnavailableError, ManagedIdentityCredential
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm


def main() -> int:
    client_id, key_id, wrapped = sys.argv[1:4]
    credential = ManagedIdentityCredential(client_id=client_id or None)
    try:
        credential.get_token("https://vault.azure.net/.default")
    except (ClientAuthenticationError, CredentialUnavailableError) as error:
        print(f"NO TOKEN: {str(error).splitlines()[0]}")
        return 3
    crypto = CryptographyClient(key_id, credential, verify_challenge_resource=False)
    try:
        key = crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, base64.b64decode(wrapped)).key
    except HttpResponseError as error:
        print(f"REFUSED: {error.status_code} {error.error.code if error.error else error.reason}")
        return 4
    print(f"UNWRAPPED: {key.hex()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
