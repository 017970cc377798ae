"""The local Key Vault through the unmodified azure-keyvault-keys / -secrets clients and raw HTTPS:
keys, secrets, soft delete and purge, wrap and unwrap, the challenge, tokens, roles, and errors."""
from __future__ import annotations

import base64
import datetime as dt
import json
import os

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.keyvault.keys import KeyOperation
from azure.keyvault.keys.crypto import KeyWrapAlgorithm
from azure.storage.blob import BlobClient

from localbatch import LocalBatchServer
from localbatch.arm.identities import POOL_IDENTITY, UNPRIVILEGED_IDENTITY
from localbatch.identity.tokens import BATCH_AUDIENCE, KEY_VAULT_AUDIENCE, LOCAL_TENANT_ID
from resources.key_vault_key_wrapper import KeyVaultKeyWrapper

from .services_support import ServicesStack, services  # noqa: F401  (fixture)
from .support import RawClient, unique_id

WRAP_ONLY = [KeyOperation.wrap_key, KeyOperation.unwrap_key]


def _raw(services: ServicesStack) -> RawClient:
    return RawClient(services.url, ssl_context=services.ssl_context())


def _vault_request(services: ServicesStack, method: str, path: str, token: str | None = None,
                   body: dict | None = None, api_version: str | None = "7.6"):
    authorization = f"Bearer {token}" if token is not None else ""
    return _raw(services).request(method, path, body=body, sign=False, authorization=authorization,
                                  api_version=api_version)


def test_a_key_is_created_read_listed_and_never_shows_its_private_half(services: ServicesStack) -> None:
    keys = services.key_client()
    name = unique_id("key")
    expires = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(hours=1)

    created = keys.create_rsa_key(name, size=3072, key_operations=WRAP_ONLY, expires_on=expires,
                                  tags={"purpose": "test"})

    assert created.id.startswith(f"{services.url}/keys/{name}/")
    assert created.key_type == "RSA" and created.key.n and len(created.key.n) == 384
    assert created.key.d is None
    assert sorted(created.key_operations) == sorted(["wrapKey", "unwrapKey"])
    assert created.properties.expires_on == expires and created.properties.tags == {"purpose": "test"}
    assert keys.get_key(name).id == created.id
    assert keys.get_key(name, created.properties.version).key.n == created.key.n
    second = keys.create_rsa_key(name, key_operations=WRAP_ONLY)
    assert [v.version for v in keys.list_properties_of_key_versions(name)] == [created.properties.version,
                                                                                second.properties.version]
    assert keys.get_key(name).properties.version == second.properties.version
    assert name in {key.name for key in keys.list_properties_of_keys()}
    raw = _vault_request(services, "GET", f"/keys/{name}", services.token(KEY_VAULT_AUDIENCE))
    assert raw.status == 200 and set(raw.json()["key"]) == {"kid", "kty", "key_ops", "n", "e"}


def test_wrap_and_unwrap_round_trip_with_every_algorithm(services: ServicesStack) -> None:
    key = services.key_client().create_rsa_key(unique_id("key"), key_operations=WRAP_ONLY)
    crypto = services.crypto_client(key.id, POOL_IDENTITY)
    content_key = os.urandom(32)
    for algorithm in (KeyWrapAlgorithm.rsa_oaep_256, KeyWrapAlgorithm.rsa_oaep, KeyWrapAlgorithm.rsa1_5):
        wrapped = crypto.wrap_key(algorithm, content_key)
        assert wrapped.encrypted_key != content_key and wrapped.key_id == key.id
        assert crypto.unwrap_key(algorithm, wrapped.encrypted_key).key == content_key


def test_a_key_made_without_wrap_cannot_wrap(services: ServicesStack) -> None:
    key = services.key_client().create_rsa_key(unique_id("key"), key_operations=[KeyOperation.unwrap_key])
    token = services.token(KEY_VAULT_AUDIENCE)
    body = {"alg": "RSA-OAEP-256", "value": base64.urlsafe_b64encode(b"x" * 32).decode().rstrip("=")}

    answer = _vault_request(services, "POST", f"/keys/{key.name}/{key.properties.version}/wrapkey", token, body)

    assert answer.status == 403
    assert answer.json()["error"]["code"] == "Forbidden"
    assert "wrapKey is not permitted" in answer.json()["error"]["message"]


def test_an_expired_key_still_unwraps_but_no_longer_wraps(services: ServicesStack) -> None:
    keys = services.key_client()
    key = keys.create_rsa_key(unique_id("key"), key_operations=WRAP_ONLY)
    wrapped = services.crypto_client(key.id, POOL_IDENTITY).wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"k" * 32)
    expired = keys.create_rsa_key(key.name, key_operations=WRAP_ONLY,
                                  expires_on=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1))
    token = services.token(KEY_VAULT_AUDIENCE)
    payload = base64.urlsafe_b64encode(b"k" * 32).decode().rstrip("=")

    refused = _vault_request(services, "POST", f"/keys/{key.name}/{expired.properties.version}/wrapkey", token,
                             {"alg": "RSA-OAEP-256", "value": payload})
    # The older version (no expiry) still unwraps what it wrapped.
    assert services.crypto_client(key.id, POOL_IDENTITY).unwrap_key(
        KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key).key == b"k" * 32

    assert refused.status == 403 and refused.json()["error"]["innererror"]["code"] == "KeyExpired"


def test_delete_keeps_the_key_recoverable_until_purged(services: ServicesStack) -> None:
    keys = services.key_client()
    name = unique_id("key")
    keys.create_rsa_key(name, key_operations=WRAP_ONLY)

    deleted = keys.begin_delete_key(name).result()

    assert deleted.recovery_id == f"{services.url}/deletedkeys/{name}"
    assert deleted.scheduled_purge_date > deleted.deleted_date
    with pytest.raises(ResourceNotFoundError, match="KeyNotFound"):
        keys.get_key(name)
    assert keys.get_deleted_key(name).name == name
    assert name in {key.name for key in keys.list_deleted_keys()}
    with pytest.raises(ResourceExistsError, match="deleted but recoverable"):
        keys.create_rsa_key(name)
    keys.purge_deleted_key(name)
    with pytest.raises(ResourceNotFoundError):
        keys.get_deleted_key(name)
    assert keys.create_rsa_key(name).name == name  # the name is free again


def test_secrets_are_set_read_deleted_and_purged(services: ServicesStack) -> None:
    secrets = services.secret_client()
    name = unique_id("secret")

    first = secrets.set_secret(name, "one", content_type="text/plain")
    second = secrets.set_secret(name, "two")

    assert secrets.get_secret(name).value == "two"
    assert secrets.get_secret(name, first.properties.version).value == "one"
    assert secrets.get_secret(name, first.properties.version).properties.content_type == "text/plain"
    assert second.id.startswith(f"{services.url}/secrets/{name}/")
    secrets.begin_delete_secret(name).result()
    with pytest.raises(ResourceNotFoundError, match="SecretNotFound"):
        secrets.get_secret(name)
    assert secrets.get_deleted_secret(name).name == name
    secrets.purge_deleted_secret(name)
    with pytest.raises(ResourceNotFoundError):
        secrets.get_deleted_secret(name)


def test_a_request_without_a_token_gets_the_challenge_a_real_vault_sends(services: ServicesStack) -> None:
    answer = _vault_request(services, "GET", "/keys/anything")

    assert answer.status == 401
    assert answer.headers["www-authenticate"] == (
        f'Bearer authorization="https://login.microsoftonline.com/{LOCAL_TENANT_ID}", '
        'resource="https://vault.azure.net"')
    assert answer.json() == {"error": {"code": "Unauthorized",
                                       "message": "AKV10000: Request is missing a Bearer or PoP token."}}


@pytest.mark.parametrize("make_token", [
    pytest.param(lambda s: s.token(BATCH_AUDIENCE), id="a Batch token"),
    pytest.param(lambda s: s.token(KEY_VAULT_AUDIENCE)[:-4] + "AAAA", id="a forged signature"),
    pytest.param(lambda s: s.server.identity.issue(KEY_VAULT_AUDIENCE, lifetime_seconds=-3600).access_token,
                 id="an expired token"),
    pytest.param(lambda s: "not-a-jwt", id="not a JWT"),
])
def test_a_token_that_does_not_pass_gets_the_challenge_and_a_reason(services: ServicesStack, make_token) -> None:
    token = make_token(services)

    answer = _vault_request(services, "GET", "/keys/anything", token)

    assert answer.status == 401
    assert answer.headers["www-authenticate"].startswith("Bearer authorization=")
    error = answer.json()["error"]
    assert error["code"] == "Unauthorized" and error["message"].startswith("AKV10032: ")
    assert token not in answer.body.decode("utf-8", "replace")


def test_the_pool_identity_may_unwrap_but_not_manage_keys(services: ServicesStack) -> None:
    key = services.key_client().create_rsa_key(unique_id("key"), key_operations=WRAP_ONLY)
    wrapped = services.crypto_client(key.id, POOL_IDENTITY).wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"c" * 32)

    with pytest.raises(HttpResponseError) as refused:
        services.key_client(POOL_IDENTITY).create_rsa_key(unique_id("key"))
    with pytest.raises(HttpResponseError) as not_deleted:
        services.key_client(POOL_IDENTITY).begin_delete_key(key.name)

    assert services.crypto_client(key.id, POOL_IDENTITY).unwrap_key(
        KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key).key == b"c" * 32
    assert refused.value.status_code == 403 and "keys/create/action" in str(refused.value)
    assert not_deleted.value.status_code == 403 and "keys/delete" in str(not_deleted.value)


def test_a_caller_without_a_role_is_refused_as_rbac_refuses(services: ServicesStack) -> None:
    key = services.key_client().create_rsa_key(unique_id("key"), key_operations=WRAP_ONLY)
    wrapped = services.crypto_client(key.id, POOL_IDENTITY).wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"c" * 32)

    with pytest.raises(HttpResponseError) as refused:
        services.crypto_client(key.id, UNPRIVILEGED_IDENTITY).unwrap_key(
            KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key)

    assert refused.value.status_code == 403
    assert refused.value.error.code == "Forbidden"
    message = refused.value.error.message
    assert f"oid={UNPRIVILEGED_IDENTITY.principal_id}" in message
    assert "Action: 'Microsoft.KeyVault/vaults/keys/unwrap/action'" in message
    raw = _vault_request(services, "POST", f"/keys/{key.name}/{key.properties.version}/unwrapkey",
                         services.token(KEY_VAULT_AUDIENCE, UNPRIVILEGED_IDENTITY),
                         {"alg": "RSA-OAEP-256", "value": base64.urlsafe_b64encode(wrapped.encrypted_key).decode()})
    assert raw.json()["error"]["innererror"] == {"code": "ForbiddenByRbac"}


@pytest.mark.parametrize(("method", "path", "body", "api_version", "status", "code", "names"), [
    ("GET", "/keys/x", None, None, 400, "BadParameter", "api-version"),
    ("GET", "/keys/x", None, "1999-01-01", 400, "BadParameter", "1999-01-01"),
    ("POST", "/keys/bad_name!/create", {"kty": "RSA"}, "7.6", 400, "BadParameter", "bad_name!"),
    ("POST", "/keys/k-ec/create", {"kty": "EC"}, "7.6", 400, "BadParameter", "EC"),
    ("POST", "/keys/k-size/create", {"kty": "RSA", "key_size": 1024}, "7.6", 400, "BadParameter", "1024"),
    ("POST", "/keys/k-json/create", b"{not json", "7.6", 400, "BadParameter", "JSON"),
    ("POST", "/keys/k-x/1/encrypt", {"alg": "RSA-OAEP", "value": "AA"}, "7.6", 501, "FeatureNotEmulated", "encrypt"),
    ("GET", "/keys/never-made", None, "7.6", 404, "KeyNotFound", "never-made"),
    ("GET", "/secrets/never-made", None, "7.6", 404, "SecretNotFound", "never-made"),
])
def test_bad_requests_get_the_vault_errors(services: ServicesStack, method, path, body, api_version, status, code,
                                           names) -> None:
    raw = _raw(services)
    token = services.token(KEY_VAULT_AUDIENCE)
    answer = raw.request(method, path, body=body, sign=False, authorization=f"Bearer {token}",
                         api_version=api_version)

    assert answer.status == status, answer.body
    assert answer.json()["error"]["code"] == code
    assert names in answer.json()["error"]["message"]


def test_a_bad_wrap_algorithm_or_value_is_a_bad_parameter(services: ServicesStack) -> None:
    key = services.key_client().create_rsa_key(unique_id("key"), key_operations=WRAP_ONLY)
    token = services.token(KEY_VAULT_AUDIENCE)
    path = f"/keys/{key.name}/{key.properties.version}/unwrapkey"

    for body in ({"alg": "A256KW", "value": "AAAA"}, {"alg": "RSA-OAEP-256"},
                 {"alg": "RSA-OAEP-256", "value": "AAAA"}):
        answer = _vault_request(services, "POST", path, token, body)
        assert answer.status == 400 and answer.json()["error"]["code"] == "BadParameter", body


def test_keys_survive_a_restart(tmp_path, services: ServicesStack) -> None:
    location = tmp_path / "state"
    options = dict(services_port=0, services_cert=str(services.certificates.server_certificate),
                   services_key=str(services.certificates.server_key))
    with LocalBatchServer(str(location), **options) as first:
        stack = ServicesStack(first, services.certificates)
        key = stack.key_client().create_rsa_key("survivor", key_operations=WRAP_ONLY)
        wrapped = stack.crypto_client(key.id, POOL_IDENTITY).wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"s" * 32)

    with LocalBatchServer(str(location), **options) as second:
        stack = ServicesStack(second, services.certificates)
        again = stack.key_client().get_key("survivor")
        unwrapped = stack.crypto_client(again.id, POOL_IDENTITY).unwrap_key(
            KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key).key

    assert again.key.n == key.key.n and unwrapped == b"s" * 32


def test_a_tampered_client_side_encrypted_blob_fails_to_decrypt(services: ServicesStack, container) -> None:
    """Client-side encryption v2 with a vault key: a changed ciphertext byte fails GCM authentication."""
    key = services.key_client().create_rsa_key(unique_id("key"), key_operations=WRAP_ONLY)
    wrapper = KeyVaultKeyWrapper(services.crypto_client(key.id, POOL_IDENTITY))
    plaintext = b"top secret, " * 100
    writer = BlobClient.from_connection_string(
        _connection_string(container), container.container_name, "secret.bin",
        require_encryption=True, key_encryption_key=wrapper, encryption_version="2.0")
    writer.upload_blob(plaintext)
    stored = container.get_blob_client("secret.bin")
    ciphertext = bytearray(stored.download_blob().readall())
    metadata = stored.get_blob_properties().metadata
    reader = BlobClient.from_connection_string(
        _connection_string(container), container.container_name, "secret.bin", require_encryption=True,
        key_resolver_function=lambda kid: KeyVaultKeyWrapper(services.crypto_client(kid, POOL_IDENTITY)))
    assert reader.download_blob().readall() == plaintext  # untouched, it decrypts

    ciphertext[20] ^= 0x01
    stored.upload_blob(bytes(ciphertext), overwrite=True, metadata=metadata)

    assert plaintext[:12] not in bytes(ciphertext)
    assert json.loads(metadata["encryptiondata"])["EncryptionAgent"]["Protocol"] == "2.0"
    with pytest.raises(HttpResponseError, match="[Dd]ecryption failed"):
        reader.download_blob().readall()


def _connection_string(container) -> str:
    credential = container.credential
    return (f"DefaultEndpointsProtocol=http;AccountName={credential.account_name};"
            f"AccountKey={credential.account_key};BlobEndpoint={container.primary_endpoint.rsplit('/', 1)[0]};")


def test_the_aio_clients_create_wrap_and_unwrap(services: ServicesStack) -> None:
    import asyncio

    from azure.core.credentials import AccessToken
    from azure.keyvault.keys.aio import KeyClient as AsyncKeyClient
    from azure.keyvault.keys.crypto.aio import CryptographyClient as AsyncCryptographyClient

    class AsyncIssuerCredential:
        def __init__(self, identity):
            self.sync = services.credential(identity)

        async def get_token(self, *scopes: str, **options) -> AccessToken:
            return self.sync.get_token(*scopes, **options)

        async def close(self) -> None:
            pass

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc_info) -> None:
            pass

    async def scenario() -> tuple[bytes, str]:
        from localbatch.arm.identities import LOCAL_DEVELOPER
        async with AsyncKeyClient(services.url, AsyncIssuerCredential(LOCAL_DEVELOPER), verify_challenge_resource=False,
                                  connection_verify=services.trust_bundle) as keys:
            key = await keys.create_rsa_key(unique_id("aio-key"), key_operations=WRAP_ONLY)
        async with AsyncCryptographyClient(key.id, AsyncIssuerCredential(POOL_IDENTITY),
                                           verify_challenge_resource=False,
                                           connection_verify=services.trust_bundle) as crypto:
            wrapped = await crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"a" * 32)
            unwrapped = await crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key)
        return unwrapped.key, wrapped.key_id

    content_key, key_id = asyncio.run(scenario())

    assert content_key == b"a" * 32 and key_id.startswith(f"{services.url}/keys/aio-key-")


@pytest.mark.parametrize("body", [
    {"kty": "RSA", "attributes": "soon"}, {"kty": "RSA", "attributes": {"exp": "tomorrow"}},
    {"kty": "RSA", "attributes": {"enabled": "yes"}}, {"kty": "RSA", "tags": ["a"]}, {"kty": "RSA", "tags": {"a": 1}},
    {"kty": "RSA", "key_ops": "wrapKey"}, {"kty": "RSA", "key_ops": [1]}, {"kty": "RSA", "key_size": True},
    {"kty": ["RSA"]}, [], "text", 7, {"kty": "RSA", "public_exponent": 3},
])
def test_malformed_key_bodies_are_bad_parameters_never_500(services: ServicesStack, body) -> None:
    answer = _raw(services).request("POST", f"/keys/{unique_id('k')}/create", body=json.dumps(body).encode(),
                                    sign=False, authorization=f"Bearer {services.token(KEY_VAULT_AUDIENCE)}",
                                    api_version="7.6")

    assert answer.status == 400, answer.body
    assert answer.json()["error"]["code"] == "BadParameter"


@pytest.mark.parametrize("body", [
    {"value": 5}, {"value": "x", "attributes": []}, {"value": "x", "tags": "t"}, {"value": "x", "contentType": 1}, [],
])
def test_malformed_secret_bodies_are_bad_parameters_never_500(services: ServicesStack, body) -> None:
    answer = _raw(services).request("PUT", f"/secrets/{unique_id('s')}", body=json.dumps(body).encode(), sign=False,
                                    authorization=f"Bearer {services.token(KEY_VAULT_AUDIENCE)}", api_version="7.6")

    assert answer.status == 400, answer.body
    assert answer.json()["error"]["code"] == "BadParameter"


def test_a_vault_database_that_cannot_be_opened_stops_start_up_naming_it(tmp_path, services: ServicesStack) -> None:
    from localbatch.server import KEY_VAULT_DIRECTORY
    from localbatch.store import StateDatabaseError
    (tmp_path / KEY_VAULT_DIRECTORY / "keyvault.sqlite3").mkdir(parents=True)  # a directory where the file goes

    server = LocalBatchServer(str(tmp_path), services_port=0,
                              services_cert=str(services.certificates.server_certificate),
                              services_key=str(services.certificates.server_key))
    with pytest.raises(StateDatabaseError, match="vault's database"):
        server.start()
