"""A Key Vault key as the key-encryption key of azure-storage-blob's client-side encryption.

azure-storage-blob encrypts each blob with a fresh AES-256-GCM content key (encryption v2) and
stores that key *wrapped* in the blob's metadata. It wraps and unwraps through any object with
four methods: ``wrap_key``, ``unwrap_key``, ``get_kid`` and ``get_key_wrap_algorithm``.
azure-keyvault-keys' ``CryptographyClient`` does the RSA work in the vault, so the private key
never leaves it, but its methods have other signatures and return types: this adapter bridges
them. Sample 3 uses it to upload, and the task on the node uses it to download; it needs only
azure-keyvault-keys, so you can copy it as it is.
"""

from __future__ import annotations

from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm


class KeyVaultKeyWrapper:
    """Wrap and unwrap content keys with an RSA key in Key Vault (RSA-OAEP-256 by default)."""

    def __init__(self, cryptography_client: CryptographyClient,
                 algorithm: KeyWrapAlgorithm = KeyWrapAlgorithm.rsa_oaep_256) -> None:
        self._client = cryptography_client
        self._algorithm = algorithm

    def wrap_key(self, key: bytes) -> bytes:
        """Return ``key`` encrypted with the vault key's public half."""
        return self._client.wrap_key(self._algorithm, key).encrypted_key

    def unwrap_key(self, key: bytes, algorithm: str) -> bytes:
        """Return the content key, decrypted by the vault (the caller needs the unwrap permission)."""
        return self._client.unwrap_key(KeyWrapAlgorithm(algorithm), key).key

    def get_kid(self) -> str:
        """The vault key's id (with its version), stored in the blob's metadata to find it again."""
        return self._client.key_id

    def get_key_wrap_algorithm(self) -> str:
        """The wrap algorithm's name, stored in the blob's metadata beside the wrapped key."""
        return self._algorithm.value
