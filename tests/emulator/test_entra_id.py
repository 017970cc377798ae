"""localbatch on https with Microsoft Entra ID: the token issuer, bearer checks, and https URLs.

The server here serves https with a certificate of a development CA made for the module, and its
clients trust that CA only (``connection_verify``). Tokens come from the server's own issuer (as
DefaultAzureCredential gets them through the managed identity endpoint), or are made wrong on
purpose with the issuer's signing code (expired, for another audience, forged...).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import jwt
import pytest
from azure.batch import BatchClient, models
from azure.core.credentials import AccessToken, AzureNamedKeyCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError
import certifi
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from localbatch import LocalBatchServer
from localbatch.accounts import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME
from localbatch.identity import (BATCH_AUDIENCE, DEVELOPER_IDENTITY, LOCAL_TENANT_ID, STORAGE_AUDIENCE,
                                 WELL_KNOWN_USER_ASSIGNED_IDENTITY, TokenIssuer, tenant_issuer)
from localbatch.identity.certificates import DevelopmentCertificates, ensure_development_certificates
from localbatch.identity.endpoint import IDENTITY_HEADER_FILE, TOKEN_PATH

from .conftest import fast_timings
from .support import RawClient, create_job, create_pool_and_wait, run_task, unique_id

HOUR = 3600


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> DevelopmentCertificates:
    return ensure_development_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def https_server(tmp_path_factory, certificates) -> Iterator[LocalBatchServer]:
    location = tmp_path_factory.mktemp("localbatch-https")
    with LocalBatchServer(str(location), timings=fast_timings(), cert=str(certificates.server_certificate),
                          key=str(certificates.server_key)) as running:
        yield running


@pytest.fixture(scope="module")
def issuer(https_server) -> TokenIssuer:
    return https_server.identity


@pytest.fixture(scope="module")
def ca_context(certificates) -> ssl.SSLContext:
    """Trusts the development CA and nothing else."""
    return ssl.create_default_context(cafile=str(certificates.ca_certificate))


@pytest.fixture(scope="module")
def raw(https_server, ca_context) -> RawClient:
    return RawClient(https_server.url, ssl_context=ca_context)


class StaticToken:
    """A TokenCredential that hands out one fixed token (made by the test)."""

    def __init__(self, token: str):
        self.token = token

    def get_token(self, *scopes, **kwargs) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + HOUR)


def token_client(server: LocalBatchServer, certificates: DevelopmentCertificates, token: str) -> BatchClient:
    return BatchClient(server.url, StaticToken(token), connection_verify=str(certificates.ca_certificate),
                       retry_total=0)


@pytest.fixture(scope="module")
def entra_client(https_server, certificates, issuer) -> Iterator[BatchClient]:
    with token_client(https_server, certificates, issuer.issue(BATCH_AUDIENCE).access_token) as client:
        yield client


# ---- tokens that must be refused -------------------------------------------------------------------
def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _alg_none(issuer: TokenIssuer) -> str:
    claims = issuer.issue(BATCH_AUDIENCE).access_token.split(".")[1]
    return f"{_b64url(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{claims}."


def _hs256_with_the_public_key(issuer: TokenIssuer) -> str:
    """The classic key-confusion forgery: HMAC 'signed' with the issuer's public key as the secret."""
    valid = jwt.decode(issuer.issue(BATCH_AUDIENCE).access_token, options={"verify_signature": False})
    public_pem = issuer.signing_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{_b64url(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': issuer.key_id}).encode())}." \
                    f"{_b64url(json.dumps(valid).encode())}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def _signed_by_another_key(issuer: TokenIssuer) -> str:
    """Right kid, right claims, signed by a key that is not the issuer's."""
    impostor = TokenIssuer(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    valid = jwt.decode(issuer.issue(BATCH_AUDIENCE).access_token, options={"verify_signature": False})
    return impostor.sign({"typ": "JWT", "alg": "RS256", "kid": issuer.key_id}, valid)


def _tampered(issuer: TokenIssuer) -> str:
    """A valid token whose claims were changed after signing (another object id)."""
    header, claims, signature = issuer.issue(BATCH_AUDIENCE).access_token.split(".")
    body = json.loads(base64.urlsafe_b64decode(claims + "=="))
    body["oid"] = "00000000-0000-0000-0000-000000000001"
    return f"{header}.{_b64url(json.dumps(body).encode())}.{signature}"


REFUSED_TOKENS = {
    "expired": (lambda issuer: issuer.issue(BATCH_AUDIENCE, now=time.time() - 3 * HOUR, lifetime_seconds=HOUR)
                .access_token, "expiry"),
    "not-yet-valid": (lambda issuer: issuer.issue(BATCH_AUDIENCE, now=time.time() + 2 * HOUR).access_token,
                      "not yet valid"),
    "storage-audience": (lambda issuer: issuer.issue(STORAGE_AUDIENCE).access_token, "wrong audience"),
    "audience-without-slash": (lambda issuer: issuer.issue("https://batch.core.windows.net").access_token,
                               "wrong audience"),
    "wrong-issuer": (lambda issuer: issuer.issue(BATCH_AUDIENCE, iss="https://sts.windows.net/"
                                                 "11111111-1111-1111-1111-111111111111/").access_token, "issuer"),
    "wrong-tenant": (lambda issuer: issuer.issue(BATCH_AUDIENCE, tid="11111111-1111-1111-1111-111111111111")
                     .access_token, "tenant"),
    "bad-signature": (_signed_by_another_key, "signature"),
    "tampered-claims": (_tampered, "signature"),
    "alg-none": (_alg_none, "algorithm"),
    "hs256-key-confusion": (_hs256_with_the_public_key, "algorithm"),
    "not-a-jwt": (lambda issuer: "not-a-token", "well-formed"),
    "deeply-nested-header": (lambda issuer: f"{_b64url(b'[' * 3000 + b']' * 3000)}.e30.e30", "well-formed"),
    "claims-not-an-object": (lambda issuer: issuer.sign({"alg": "RS256", "kid": issuer.key_id}, []), "well-formed"),
    "empty": (lambda issuer: "", "missing the access token"),
}


def _assert_bearer_refusal(status: int, headers: dict[str, str], body: dict, reason_words: str, token: str) -> None:
    assert status == 401
    challenge = headers["www-authenticate"]
    assert challenge == (f"Bearer authorization_uri=https://login.microsoftonline.com/{LOCAL_TENANT_ID}/oauth2/"
                         f"authorize resource_id=https://batch.core.windows.net/")
    assert body["code"] == "AuthenticationFailed"
    assert body["message"]["value"].startswith("Server failed to authenticate the request.")
    details = {value["key"]: value["value"] for value in body["values"]}
    assert reason_words in details["AuthenticationErrorDetail"].lower()
    for part in filter(lambda text: len(text) > 8, token.split(".")):
        assert part not in json.dumps(body)


@pytest.mark.parametrize("case", REFUSED_TOKENS, ids=list(REFUSED_TOKENS))
def test_a_bad_token_is_refused_with_401_and_a_bearer_challenge(raw, issuer, case):
    make, reason_words = REFUSED_TOKENS[case]
    token = make(issuer)
    response = raw.request("GET", "/pools", authorization=f"Bearer {token}")
    _assert_bearer_refusal(response.status, response.headers, response.json(), reason_words, token)


@pytest.mark.parametrize("case", ["expired", "storage-audience", "bad-signature", "alg-none"])
def test_the_sdk_sees_the_refusal_as_an_authentication_failure(https_server, certificates, issuer, case):
    make, reason_words = REFUSED_TOKENS[case]
    token = make(issuer)
    with token_client(https_server, certificates, token) as client:
        with pytest.raises(ClientAuthenticationError) as caught:
            list(client.list_pools())
    assert caught.value.status_code == 401
    assert caught.value.error.code == "AuthenticationFailed"
    assert reason_words in {d.code: d.message for d in caught.value.error.details}["AuthenticationErrorDetail"].lower()
    assert token.split(".")[1] not in str(caught.value)


# ---- tokens that are accepted --------------------------------------------------------------------
def test_a_token_from_the_issuer_works_for_every_operation_over_https(entra_client):
    pool_id = unique_id("entra-pool")
    create_pool_and_wait(entra_client, pool_id)
    job_id = create_job(entra_client, pool_id)
    task = run_task(entra_client, job_id, "/bin/sh -c 'echo signed in'")
    assert task.execution_info.exit_code == 0
    assert entra_client.get_pool(pool_id).id == pool_id


def test_default_azure_credential_gets_tokens_from_the_managed_identity_endpoint(https_server, certificates,
                                                                                 monkeypatch):
    from azure.identity import DefaultAzureCredential
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{https_server.url}{TOKEN_PATH}")
    monkeypatch.setenv("IDENTITY_HEADER", _identity_header(https_server))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificates.trust_bundle))
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE",
                 "MSI_ENDPOINT", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    credential = DefaultAzureCredential()
    with BatchClient(https_server.url, credential) as client:
        assert isinstance(list(client.list_pools()), list)
    claims = jwt.decode(credential.get_token("https://batch.core.windows.net//.default").token,
                        options={"verify_signature": False})
    assert claims["aud"] == BATCH_AUDIENCE and claims["oid"] == DEVELOPER_IDENTITY.principal_id


def test_a_user_assigned_identity_is_chosen_by_client_id_or_resource_id(https_server, certificates, monkeypatch):
    from azure.identity import ManagedIdentityCredential
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{https_server.url}{TOKEN_PATH}")
    monkeypatch.setenv("IDENTITY_HEADER", _identity_header(https_server))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificates.trust_bundle))
    identity = WELL_KNOWN_USER_ASSIGNED_IDENTITY
    by_client_id = ManagedIdentityCredential(client_id=identity.client_id).get_token(STORAGE_AUDIENCE + "/.default")
    by_resource_id = ManagedIdentityCredential(
        identity_config={"resource_id": identity.resource_id}).get_token(STORAGE_AUDIENCE + "/.default")
    for token in (by_client_id, by_resource_id):
        claims = jwt.decode(token.token, options={"verify_signature": False})
        assert (claims["appid"], claims["oid"], claims["xms_mirid"]) == (
            identity.client_id, identity.principal_id, identity.resource_id)
        assert claims["aud"] == STORAGE_AUDIENCE
    with pytest.raises(ClientAuthenticationError, match="No managed identity found"):
        ManagedIdentityCredential(client_id="99999999-9999-9999-9999-999999999999").get_token(
            STORAGE_AUDIENCE + "/.default")


def test_tokens_carry_entra_claims_and_verify_against_the_published_keys(https_server, issuer, ca_context):
    token = issuer.issue(BATCH_AUDIENCE).access_token
    jwks = json.loads(urllib.request.urlopen(
        f"{https_server.url}/{LOCAL_TENANT_ID}/discovery/keys", context=ca_context).read())
    [key] = jwks["keys"]
    assert jwt.get_unverified_header(token)["kid"] == key["kid"]
    claims = jwt.decode(token, jwt.PyJWK(key).key, algorithms=["RS256"], audience=BATCH_AUDIENCE,
                        issuer=tenant_issuer())
    assert {"iss", "aud", "tid", "oid", "appid", "nbf", "iat", "exp"} <= set(claims)
    assert claims["tid"] == LOCAL_TENANT_ID and claims["nbf"] <= time.time() < claims["exp"]
    discovery = json.loads(urllib.request.urlopen(
        f"{https_server.url}/{LOCAL_TENANT_ID}/.well-known/openid-configuration", context=ca_context).read())
    assert discovery["issuer"] == tenant_issuer()
    assert discovery["jwks_uri"].startswith("https://")


@pytest.mark.parametrize("headers, status", [({}, 400), ({"X-IDENTITY-HEADER": "not-the-secret"}, 401)],
                         ids=["missing-secret", "wrong-secret"])
def test_the_token_endpoint_needs_its_secret(https_server, ca_context, headers, status):
    request = urllib.request.Request(
        f"{https_server.url}{TOKEN_PATH}?api-version=2019-08-01&resource=https://batch.core.windows.net/",
        headers=headers)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, context=ca_context)
    assert caught.value.code == status
    assert "access_token" not in caught.value.read().decode()


def _identity_header(server: LocalBatchServer) -> str:
    return (Path(server.location) / "identity" / IDENTITY_HEADER_FILE).read_text().strip()


# ---- shared key alongside, and accounts that allow only one mode ---------------------------------
def test_shared_key_keeps_working_over_https(https_server, certificates):
    with BatchClient(https_server.url, AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME, WELL_KNOWN_ACCOUNT_KEY),
                     connection_verify=str(certificates.ca_certificate)) as client:
        assert isinstance(list(client.list_pools()), list)


def test_an_account_that_allows_only_entra_id_refuses_shared_key(tmp_path, certificates):
    with LocalBatchServer(str(tmp_path), cert=str(certificates.server_certificate), key=str(certificates.server_key),
                          allowed_authentication_modes=["AAD"]) as server:
        raw = RawClient(server.url, ssl_context=ssl.create_default_context(cafile=str(certificates.ca_certificate)))
        refused = raw.request("GET", "/pools")
        accepted = raw.request("GET", "/pools",
                               authorization=f"Bearer {server.identity.issue(BATCH_AUDIENCE).access_token}")
    assert refused.status == 403 and refused.error_code == "AuthenticationFailed"
    assert "SharedKey is not allowed" in refused.detail("AuthenticationErrorDetail")
    assert accepted.status == 200


def test_an_account_that_allows_only_shared_key_refuses_tokens(tmp_path):
    with LocalBatchServer(str(tmp_path), allowed_authentication_modes=["SharedKey"]) as server:
        refused = RawClient(server.url).request(
            "GET", "/pools", authorization=f"Bearer {server.identity.issue(BATCH_AUDIENCE).access_token}")
    assert refused.status == 403
    assert "AAD is not allowed" in refused.detail("AuthenticationErrorDetail")


# ---- URLs keep the scheme and host the client used ------------------------------------------------
def test_paging_links_and_metadata_keep_https(raw, entra_client):
    for _ in range(3):
        entra_client.create_job(models.BatchJobCreateOptions(
            id=unique_id("paged"), pool_info=models.BatchPoolInfo(pool_id="no-such-pool")))
    page = raw.request("GET", "/jobs?maxresults=1").json()
    assert page["odata.metadata"].startswith(f"https://127.0.0.1:{raw.port}/$metadata")
    assert page["odata.nextLink"].startswith(f"https://127.0.0.1:{raw.port}/jobs?")
    assert len(list(entra_client.list_jobs(max_results=1))) >= 3  # the SDK follows https links


def test_file_and_node_urls_keep_https(raw, entra_client):
    pool_id = unique_id("url-pool")
    create_pool_and_wait(entra_client, pool_id)
    job_id = create_job(entra_client, pool_id)
    task = run_task(entra_client, job_id, "/bin/sh -c 'echo hi'")
    base = f"https://127.0.0.1:{raw.port}/"
    assert task.url.startswith(base)
    assert task.node_info.node_url.startswith(base)
    assert task.node_info.task_root_directory_url.startswith(base)
    files = {entry.name: entry for entry in entra_client.list_task_files(job_id, task.id)}
    assert files["stdout.txt"].url.startswith(base)
    response = raw.request("HEAD", f"/jobs/{job_id}/tasks/{task.id}/files/stdout.txt")
    assert response.headers["ocp-batch-file-url"].startswith("https://127.0.0.1:")


def test_a_public_url_is_the_base_of_every_returned_url(tmp_path):
    with LocalBatchServer(str(tmp_path), public_url="https://batch.example:8443/") as server:
        page = RawClient(server.url).request("GET", "/pools?maxresults=1").json()
    assert page["odata.metadata"] == "https://batch.example:8443/$metadata#pools"


def test_plain_http_to_the_https_port_gets_a_400_that_says_to_use_https(https_server):
    port = int(https_server.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", "/pools?api-version=2025-06-01", body=b"{}" * 5000,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 400
        assert f"serves https on port {port}: use https://" in response.read().decode()
    finally:
        connection.close()
    with BatchClient(f"http://127.0.0.1:{port}", AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME, WELL_KNOWN_ACCOUNT_KEY),
                     retry_total=0) as client:
        with pytest.raises(HttpResponseError) as caught:
            list(client.list_pools())
    assert caught.value.status_code == 400 and "use https://" in caught.value.response.text()


def test_a_client_that_connects_and_sends_nothing_does_not_stop_others(https_server, entra_client):
    with socket.create_connection(("127.0.0.1", int(https_server.url.rsplit(":", 1)[1]))):
        assert isinstance(list(entra_client.list_pools()), list)


def test_clients_that_do_not_trust_the_development_ca_are_refused(https_server):
    with BatchClient(https_server.url, AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME, WELL_KNOWN_ACCOUNT_KEY),
                     retry_total=0, connection_verify=certifi.where()) as client:
        with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
            list(client.list_pools())


# ---- nothing of a token is logged -----------------------------------------------------------------
def test_no_part_of_a_token_is_ever_logged(tmp_path, certificates, caplog):
    caplog.set_level(logging.DEBUG)
    with LocalBatchServer(str(tmp_path), debug=True, cert=str(certificates.server_certificate),
                          key=str(certificates.server_key)) as server:
        context = ssl.create_default_context(cafile=str(certificates.ca_certificate))
        raw = RawClient(server.url, ssl_context=context)
        good = server.identity.issue(BATCH_AUDIENCE).access_token
        bad = [make(server.identity) for make, _ in REFUSED_TOKENS.values()]
        for token in [good, *bad]:
            raw.request("GET", "/pools", authorization=f"Bearer {token}")
        header = _identity_header(server)
        request = urllib.request.Request(
            f"{server.url}{TOKEN_PATH}?api-version=2019-08-01&resource=https://batch.core.windows.net/",
            headers={"X-IDENTITY-HEADER": header})
        issued = json.loads(urllib.request.urlopen(request, context=context).read())["access_token"]
    logged = caplog.text
    assert "GET /pools -> 200" in logged and "GET /pools -> 401" in logged  # the requests were logged...
    for token in [good, issued, *bad]:
        for part in token.split("."):
            if len(part) > 8:
                assert part not in logged  # ...but never a token
    assert header not in logged


def test_the_aio_client_and_credential_work_over_https(https_server, certificates):
    """In a process that starts with the stack's environment, as a sample's does.

    (aiohttp reads the trust store once, when it is imported: SSL_CERT_FILE set later is not seen.)
    """
    program = textwrap.dedent(f"""
        import asyncio
        from azure.batch.aio import BatchClient
        from azure.identity.aio import DefaultAzureCredential

        async def main():
            async with DefaultAzureCredential() as credential, BatchClient({https_server.url!r}, credential) as client:
                print(len([pool async for pool in client.list_pools()]) >= 0)

        asyncio.run(main())
    """)
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith(("AZURE_", "IDENTITY_", "MSI_", "IMDS_"))}
    environment.update({"IDENTITY_ENDPOINT": f"{https_server.url}{TOKEN_PATH}",
                        "IDENTITY_HEADER": _identity_header(https_server),
                        "SSL_CERT_FILE": str(certificates.trust_bundle),
                        "REQUESTS_CA_BUNDLE": str(certificates.trust_bundle)})
    completed = subprocess.run([sys.executable, "-c", program], env=environment, capture_output=True, text=True,
                               timeout=120)
    assert (completed.returncode, completed.stdout.strip()) == (0, "True"), completed.stderr


@pytest.mark.parametrize("arguments, message", [
    (["--cert", "{missing}", "--key", "{missing}"], "cannot serve https: {missing}: No such file or directory"),
    (["--cert", "{certificate}"], "--cert and --key go together"),
    (["--cert", "{certificate}", "--key", "{certificate}"], "cannot serve https with --cert"),
    (["--auth-modes", "Password"], "authentication modes are SharedKey and AAD; got Password"),
], ids=["missing-files", "cert-without-key", "key-is-not-a-key", "unknown-auth-mode"])
def test_the_command_line_says_what_is_wrong_with_https_and_auth_options(tmp_path, certificates, arguments, message):
    values = {"missing": str(tmp_path / "missing.pem"), "certificate": str(certificates.server_certificate)}
    completed = subprocess.run(
        [sys.executable, "-m", "localbatch", "--port", "0", "--location", str(tmp_path / "state"),
         *[argument.format(**values) for argument in arguments]],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2
    assert completed.stderr.startswith("localbatch: ") and completed.stderr.count("\n") == 1, completed.stderr
    assert message.format(**values) in completed.stderr
