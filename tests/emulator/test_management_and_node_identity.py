"""The management-plane pool endpoint (azure-mgmt-batch) and managed identities on nodes.

A pool created through ARM is the data plane's pool, with `identity` reported on both planes.
A task on a node of a pool with a user-assigned identity gets tokens for it from the node's
managed identity endpoint (ManagedIdentityCredential, unmodified), and only for its own pool's
identities; a task on a pool without one gets none. The vault then decides by role.
"""
from __future__ import annotations

import base64
import os
import sys
from pathlib import Path
from typing import Optional

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.keys import KeyOperation
from azure.keyvault.keys.crypto import KeyWrapAlgorithm
from azure.mgmt.batch import models as arm

from localbatch.arm.identities import LOCAL_SUBSCRIPTION_ID, POOL_IDENTITY, UNPRIVILEGED_IDENTITY
from localbatch.identity.tokens import ARM_AUDIENCE

from .services_support import ACCOUNT, IMAGE, RESOURCE_GROUP, ServicesStack, arm_pool, services  # noqa: F401  (fixture)
from .support import RawClient, batch_client, create_job, read_task_file, run_task, unique_id, wait_for_nodes

PROBE = Path(__file__).with_name("managed_identity_probe.py")




@pytest.fixture(scope="module")
def client(services: ServicesStack):
    with batch_client(services.server.url) as batch:
        yield batch


def test_a_pool_created_through_arm_is_the_data_planes_pool_with_its_identity(services: ServicesStack, client) -> None:
    management = services.management_client()
    pool_id = unique_id("arm-pool")
    start_task = arm.StartTask(command_line="/bin/true", wait_for_success=True, user_identity=arm.UserIdentity(
        auto_user=arm.AutoUserSpecification(scope="Pool", elevation_level="Admin")))

    created = management.pool.create(RESOURCE_GROUP, ACCOUNT, pool_id, arm_pool((POOL_IDENTITY,), start_task=start_task))

    assert created.name == pool_id and created.type == "Microsoft.Batch/batchAccounts/pools"
    assert created.id.endswith(f"/batchAccounts/{ACCOUNT}/pools/{pool_id}")
    assert created.properties.provisioning_state == "Succeeded"
    assert created.properties.start_task.user_identity.auto_user.elevation_level == "Admin"
    [(resource_id, assigned)] = created.identity.user_assigned_identities.items()
    assert resource_id == POOL_IDENTITY.resource_id
    assert (assigned.client_id, assigned.principal_id) == (POOL_IDENTITY.client_id, POOL_IDENTITY.principal_id)
    wait_for_nodes(client, pool_id, 1)
    data_plane = client.get_pool(pool_id)
    assert data_plane.identity.type == "UserAssigned"
    [reference] = data_plane.identity.user_assigned_identities
    assert (reference.resource_id, reference.client_id) == (POOL_IDENTITY.resource_id, POOL_IDENTITY.client_id)
    assert management.pool.get(RESOURCE_GROUP, ACCOUNT, pool_id).properties.current_dedicated_nodes == 1
    assert pool_id in {pool.name for pool in management.pool.list_by_batch_account(RESOURCE_GROUP, ACCOUNT)}
    account = management.batch_account.get(RESOURCE_GROUP, ACCOUNT)
    assert account.account_endpoint == services.server.url.split("://", 1)[1]

    management.pool.begin_delete(RESOURCE_GROUP, ACCOUNT, pool_id, polling_interval=0.05).result()

    with pytest.raises(ResourceNotFoundError):
        client.get_pool(pool_id)
    with pytest.raises(ResourceNotFoundError, match="PoolNotFound"):
        management.pool.get(RESOURCE_GROUP, ACCOUNT, pool_id)


def test_the_data_plane_cannot_give_a_pool_an_identity(services: ServicesStack) -> None:
    raw = RawClient(services.server.url)
    body = {"id": unique_id("pool"), "vmSize": "standard_d2s_v3",
            "virtualMachineConfiguration": {"imageReference": {"publisher": "canonical", "offer": IMAGE.offer,
                                                               "sku": IMAGE.sku},
                                            "nodeAgentSKUId": "batch.node.ubuntu 22.04"},
            "identity": {"type": "UserAssigned", "userAssignedIdentities": [{"resourceId": POOL_IDENTITY.resource_id}]}}

    answer = raw.request("POST", "/pools", body)

    assert answer.status == 400 and "identity" in answer.body.decode()


@pytest.mark.parametrize(("change", "status", "code", "named"), [
    (lambda pool: pool.__setitem__("identity", {"type": "UserAssigned", "userAssignedIdentities": {
        POOL_IDENTITY.resource_id.replace("localbatch-identity", "nobody"): {}}}), 400, "InvalidPropertyValue", "nobody"),
    (lambda pool: pool.__setitem__("identity", {"type": "SystemAssigned"}), 400, "InvalidPropertyValue", "identity.type"),
    (lambda pool: pool["properties"].__setitem__("scaleSettings", {"autoScale": {"formula": "$x=1"},
                                                                   "fixedScale": {"targetDedicatedNodes": 1}}),
     400, "InvalidPropertyValue", "scaleSettings"),
    (lambda pool: pool["properties"].__setitem__("applicationPackages", [{"id": "x"}]), 501, "FeatureNotEmulated",
     "applicationPackages"),
    (lambda pool: pool["properties"].__setitem__("vmSizee", "x"), 400, "InvalidPropertyValue", "vmSizee"),
    (lambda pool: pool["properties"].pop("deploymentConfiguration"), 400, "MissingRequiredProperty",
     "deploymentConfiguration"),
])
def test_a_bad_arm_pool_is_refused_naming_what_is_wrong(services: ServicesStack, change, status, code, named) -> None:
    body = {"identity": {"type": "UserAssigned", "userAssignedIdentities": {POOL_IDENTITY.resource_id: {}}},
            "properties": {"vmSize": "standard_d2s_v3", "deploymentConfiguration": {"virtualMachineConfiguration": {
                "imageReference": {"publisher": "canonical", "offer": IMAGE.offer, "sku": IMAGE.sku},
                "nodeAgentSkuId": "batch.node.ubuntu 22.04"}},
                "scaleSettings": {"fixedScale": {"targetDedicatedNodes": 0}}}}
    change(body)

    answer = _arm_request(services, "PUT", f"pools/{unique_id('bad')}", body)

    assert answer.status == status, answer.body
    error = answer.json()["error"]
    assert error["code"] == code and named in error["message"]


@pytest.mark.parametrize(("path", "token", "status", "code"), [
    (f"/subscriptions/{LOCAL_SUBSCRIPTION_ID}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Batch/batchAccounts"
     f"/{ACCOUNT}/pools/p", None, 401, "AuthenticationFailed"),
    (f"/subscriptions/{LOCAL_SUBSCRIPTION_ID}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Batch/batchAccounts"
     f"/{ACCOUNT}/pools/p", "forged", 401, "InvalidAuthenticationToken"),
    (f"/subscriptions/{LOCAL_SUBSCRIPTION_ID}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Batch/batchAccounts"
     f"/{ACCOUNT}/pools/p", "pool identity", 403, "AuthorizationFailed"),
    ("/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/x/providers/Microsoft.Batch/batchAccounts/a"
     "/pools/p", "developer", 404, "SubscriptionNotFound"),
    (f"/subscriptions/{LOCAL_SUBSCRIPTION_ID}/resourceGroups/other/providers/Microsoft.Batch/batchAccounts/a/pools/p",
     "developer", 404, "ResourceGroupNotFound"),
    (f"/subscriptions/{LOCAL_SUBSCRIPTION_ID}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Batch/batchAccounts"
     "/elsewhere/pools/p", "developer", 404, "ResourceNotFound"),
])
def test_arm_refuses_as_arm_does(services: ServicesStack, path: str, token: Optional[str], status: int,
                                 code: str) -> None:
    tokens = {None: None, "forged": services.token(ARM_AUDIENCE)[:-6] + "AAAAAA",
              "pool identity": services.token(ARM_AUDIENCE, POOL_IDENTITY), "developer": services.token(ARM_AUDIENCE)}
    raw = RawClient(services.url, ssl_context=services.ssl_context())

    answer = raw.request("GET", path, sign=False, authorization=f"Bearer {tokens[token]}" if tokens[token] else "",
                         api_version="2025-06-01")

    assert answer.status == status, answer.body
    assert answer.json()["error"]["code"] == code
    if status == 401:
        assert answer.headers["www-authenticate"].startswith("Bearer authorization_uri=")


def test_the_management_client_without_a_role_gets_authorization_failed(services: ServicesStack) -> None:
    with pytest.raises(HttpResponseError) as refused:
        services.management_client(UNPRIVILEGED_IDENTITY).pool.create(
            RESOURCE_GROUP, ACCOUNT, unique_id("p"), arm_pool())

    assert refused.value.status_code == 403 and refused.value.error.code == "AuthorizationFailed"


# ---- managed identities on nodes ---------------------------------------------------------------
@pytest.fixture(scope="module")
def wrapped_key(services: ServicesStack) -> tuple[str, bytes, bytes]:
    """A vault key, a content key, and that content key wrapped by the vault key."""
    key = services.key_client().create_rsa_key(unique_id("key"), key_operations=[KeyOperation.wrap_key,
                                                                                 KeyOperation.unwrap_key])
    content_key = os.urandom(32)
    wrapped = services.crypto_client(key.id, POOL_IDENTITY).wrap_key(KeyWrapAlgorithm.rsa_oaep_256, content_key)
    return key.id, content_key, wrapped.encrypted_key


def _pool_with(services: ServicesStack, client, identities: tuple) -> str:
    pool_id = unique_id("mi-pool")
    if identities:
        services.management_client().pool.create(RESOURCE_GROUP, ACCOUNT, pool_id, arm_pool(identities))
    else:
        client.create_pool(models.BatchPoolCreateOptions(
            id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=1,
            virtual_machine_configuration=models.VirtualMachineConfiguration(
                image_reference=models.BatchVmImageReference(publisher="canonical", offer=IMAGE.offer, sku=IMAGE.sku),
                node_agent_sku_id="batch.node.ubuntu 22.04")))
    wait_for_nodes(client, pool_id, 1)
    return pool_id


def _probe(client, pool_id: str, client_id: str, wrapped_key: tuple[str, bytes, bytes]) -> str:
    key_id, _, wrapped = wrapped_key
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, f"{sys.executable} {PROBE} {client_id or chr(34) * 2} {key_id} "
                                    f"{base64.b64encode(wrapped).decode()}")
    output = read_task_file(client, job_id, task.id).strip() + read_task_file(client, job_id, task.id, "stderr.txt")
    return output


@pytest.mark.parametrize(("identities", "asked", "expected"), [
    pytest.param((POOL_IDENTITY,), POOL_IDENTITY.client_id, "UNWRAPPED", id="its pool identity, by client id"),
    pytest.param((POOL_IDENTITY,), "", "UNWRAPPED", id="the only identity of its pool, unnamed"),
    pytest.param((UNPRIVILEGED_IDENTITY,), UNPRIVILEGED_IDENTITY.client_id, "REFUSED: 403 Forbidden",
                 id="an identity without a vault role"),
    pytest.param((UNPRIVILEGED_IDENTITY,), POOL_IDENTITY.client_id, "NO TOKEN", id="another pool's identity"),
    pytest.param((), POOL_IDENTITY.client_id, "NO TOKEN", id="a pool without an identity"),
])
def test_a_task_gets_tokens_only_for_its_own_pools_identities(services: ServicesStack, client, wrapped_key,
                                                              identities, asked, expected) -> None:
    pool_id = _pool_with(services, client, identities)

    output = _probe(client, pool_id, asked, wrapped_key)

    assert output.startswith(expected), output
    if expected == "UNWRAPPED":
        assert output == f"UNWRAPPED: {wrapped_key[1].hex()}"


def test_the_node_endpoint_refuses_a_forged_or_missing_header(services: ServicesStack) -> None:
    raw = RawClient(services.server.url)
    query = "/msi/node/token?resource=https://vault.azure.net"

    missing = raw.request("GET", query, sign=False, api_version="2019-08-01")
    forged = raw.request("GET", query, sign=False, api_version="2019-08-01",
                         headers={"X-IDENTITY-HEADER": "cG9vbA.bm9kZQ.0000"})

    assert missing.status == 400 and "X-IDENTITY-HEADER" in missing.json()["error_description"]
    assert forged.status == 401


def _arm_request(services: ServicesStack, method: str, relative: str, body: dict):
    raw = RawClient(services.url, ssl_context=services.ssl_context())
    path = (f"/subscriptions/{LOCAL_SUBSCRIPTION_ID}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Batch"
            f"/batchAccounts/{ACCOUNT}/{relative}")
    return raw.request(method, path, body=body, sign=False, api_version="2025-06-01",
                       authorization=f"Bearer {services.token(ARM_AUDIENCE)}")


def test_the_services_port_without_a_certificate_is_a_clear_error(tmp_path: Path) -> None:
    import subprocess

    from .conftest import REPOSITORY_ROOT
    from .support import WAIT
    result = subprocess.run([sys.executable, "-m", "localbatch", "--port", "0", "--services-port", "0",
                             "--location", str(tmp_path)], cwd=REPOSITORY_ROOT, capture_output=True, text=True,
                            timeout=WAIT, env={**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)})

    assert result.returncode == 2
    assert "--services-port needs a certificate and key" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_services_listener_starts_from_the_command_line(tmp_path: Path, services: ServicesStack) -> None:
    from common.local import start_localbatch

    with start_localbatch(tmp_path / "state", extra_args=[
            "--services-port", "0", "--services-cert", str(services.certificates.server_certificate),
            "--services-key", str(services.certificates.server_key)]) as running:
        answer = RawClient(running.services_url, ssl_context=services.ssl_context()).request(
            "GET", "/keys/x", sign=False, api_version="7.6")

    assert running.services_url.startswith("https://127.0.0.1:")
    assert answer.status == 401 and "resource=\"https://vault.azure.net\"" in answer.headers["www-authenticate"]


def test_put_on_an_existing_pool_honours_if_none_match_and_is_otherwise_a_conflict(services: ServicesStack) -> None:
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceExistsError

    management = services.management_client()
    pool_id = unique_id("arm-twice")
    management.pool.create(RESOURCE_GROUP, ACCOUNT, pool_id, arm_pool(), match_condition=MatchConditions.IfMissing)

    with pytest.raises(ResourceExistsError) as precondition:
        management.pool.create(RESOURCE_GROUP, ACCOUNT, pool_id, arm_pool(), match_condition=MatchConditions.IfMissing)
    with pytest.raises(ResourceExistsError) as conflict:
        management.pool.create(RESOURCE_GROUP, ACCOUNT, pool_id, arm_pool())
    with pytest.raises(ResourceNotFoundError):
        management.pool.create(RESOURCE_GROUP, ACCOUNT, unique_id("absent"), arm_pool(),
                               match_condition=MatchConditions.IfPresent)

    assert precondition.value.status_code == 412
    assert conflict.value.status_code == 409 and conflict.value.error.code == "PoolExists"
    management.pool.begin_delete(RESOURCE_GROUP, ACCOUNT, pool_id, polling_interval=0.05).result()


@pytest.mark.parametrize("body", [
    {"identity": "UserAssigned", "properties": {}},
    {"properties": "big"},
    {"properties": {"vmSize": "standard_d2s_v3", "deploymentConfiguration": []}},
    {"properties": {"vmSize": "standard_d2s_v3", "deploymentConfiguration": {"virtualMachineConfiguration": 1}}},
    {"properties": {"vmSize": "standard_d2s_v3", "scaleSettings": "fixed", "deploymentConfiguration": {
        "virtualMachineConfiguration": {"imageReference": {"publisher": "canonical", "offer": "o", "sku": "s"},
                                        "nodeAgentSkuId": "batch.node.ubuntu 22.04"}}}},
    {"properties": {"vmSize": 7, "deploymentConfiguration": {"virtualMachineConfiguration": {
        "imageReference": {"publisher": "canonical", "offer": "o", "sku": "s"}, "nodeAgentSkuId": "n"}}}},
    {"identity": {"type": "UserAssigned", "userAssignedIdentities": ["x"]}, "properties": {}},
])
def test_malformed_arm_pool_bodies_are_4xx_never_500(services: ServicesStack, body) -> None:
    answer = _arm_request(services, "PUT", f"pools/{unique_id('odd')}", body)

    assert 400 <= answer.status < 500, answer.body
    assert answer.json()["error"]["code"]


def test_a_trust_bundle_remade_from_itself_keeps_this_machines_roots(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A stack that finds the emulators running re-makes the bundle while it is the exported one: the
    machine's roots (where an administrator adds a proxy's CA) must survive, or tasks' pip fails."""
    import ssl

    from localbatch.identity.certificates import ensure_development_certificates
    system = next((Path(path) for path in (ssl.get_default_verify_paths().openssl_cafile,
                                            "/etc/ssl/certs/ca-certificates.crt") if path and Path(path).is_file()),
                  None)
    if system is None:
        pytest.skip("this machine has no system CA bundle to keep")
    first = ensure_development_certificates(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(first.trust_bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(first.trust_bundle))

    again = ensure_development_certificates(tmp_path)

    bundle = again.trust_bundle.read_bytes()
    assert system.read_bytes().strip() in bundle
    assert first.ca_certificate.read_bytes().strip() in bundle


def test_an_arm_pool_may_autoscale_and_both_planes_say_so(services: ServicesStack, client) -> None:
    management = services.management_client()
    pool_id = unique_id("arm-auto")
    pool = arm_pool()
    pool.properties.scale_settings = arm.ScaleSettings(auto_scale=arm.AutoScaleSettings(
        formula="$TargetDedicatedNodes = 1;", evaluation_interval="PT5M"))

    created = management.pool.create(RESOURCE_GROUP, ACCOUNT, pool_id, pool)

    assert created.properties.scale_settings.auto_scale.formula == "$TargetDedicatedNodes = 1;"
    assert created.properties.scale_settings.fixed_scale is None
    data_plane = client.get_pool(pool_id)
    assert data_plane.enable_auto_scale and data_plane.auto_scale_formula == "$TargetDedicatedNodes = 1;"
    wait_for_nodes(client, pool_id, 1)  # the formula's first run sets the target
    assert management.pool.get(RESOURCE_GROUP, ACCOUNT, pool_id).properties.auto_scale_run is not None
    management.pool.begin_delete(RESOURCE_GROUP, ACCOUNT, pool_id, polling_interval=0.05).result()
