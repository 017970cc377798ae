"""Fixtures for the tests of the services beside Batch (Key Vault, the management plane, node
managed identities): a localbatch with its https services listener, and clients for it.

Clients trust the development CA through ``connection_verify`` (no process-wide environment is
changed). Their credential asks the server's own token issuer for a real signed token as a
given identity; the managed identity endpoint itself is exercised by tasks on nodes.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import pytest
from azure.core.credentials import AccessToken
from azure.mgmt.batch import models as arm

from localbatch import LocalBatchServer
from localbatch.arm.identities import LOCAL_DEVELOPER, LOCAL_RESOURCE_GROUP, LOCAL_SUBSCRIPTION_ID
from localbatch.identity.certificates import DevelopmentCertificates, ensure_development_certificates
from localbatch.identity.tokens import ManagedIdentity

from .conftest import fast_timings


@dataclass
class ServicesStack:
    server: LocalBatchServer
    certificates: DevelopmentCertificates

    @property
    def url(self) -> str:
        assert self.server.services_url
        return self.server.services_url

    @property
    def trust_bundle(self) -> str:
        return str(self.certificates.trust_bundle)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.trust_bundle)

    def credential(self, identity: ManagedIdentity = LOCAL_DEVELOPER) -> "IssuerCredential":
        return IssuerCredential(self.server, identity)

    def key_client(self, identity: ManagedIdentity = LOCAL_DEVELOPER, **options: Any):
        from azure.keyvault.keys import KeyClient
        return KeyClient(self.url, self.credential(identity), verify_challenge_resource=False,
                         connection_verify=self.trust_bundle, **options)

    def crypto_client(self, key_id: str, identity: ManagedIdentity):
        from azure.keyvault.keys.crypto import CryptographyClient
        return CryptographyClient(key_id, self.credential(identity), verify_challenge_resource=False,
                                  connection_verify=self.trust_bundle)

    def secret_client(self, identity: ManagedIdentity = LOCAL_DEVELOPER):
        from azure.keyvault.secrets import SecretClient
        return SecretClient(self.url, self.credential(identity), verify_challenge_resource=False,
                            connection_verify=self.trust_bundle)

    def management_client(self, identity: ManagedIdentity = LOCAL_DEVELOPER,
                          subscription_id: str = LOCAL_SUBSCRIPTION_ID):
        from azure.mgmt.batch import BatchManagementClient
        return BatchManagementClient(self.credential(identity), subscription_id, base_url=self.url,
                                     connection_verify=self.trust_bundle)

    def token(self, audience: str, identity: ManagedIdentity = LOCAL_DEVELOPER) -> str:
        return self.server.identity.issue(audience, identity).access_token


class IssuerCredential:
    """A TokenCredential whose tokens the server's issuer signs for ``identity``."""

    def __init__(self, server: LocalBatchServer, identity: ManagedIdentity):
        self.server, self.identity = server, identity

    def get_token(self, *scopes: str, **_options: Any) -> AccessToken:
        resource = scopes[0].removesuffix("/.default")
        issued = self.server.identity.issue(resource, self.identity)
        return AccessToken(issued.access_token, issued.expires_on)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServicesStack]:
    """A localbatch serving Key Vault and the management plane on an https port of its own."""
    location = tmp_path_factory.mktemp("localbatch-services")
    certificates = ensure_development_certificates(Path(location) / "tls")
    server = LocalBatchServer(str(location / "state"), timings=fast_timings(), services_port=0,
                              services_cert=str(certificates.server_certificate),
                              services_key=str(certificates.server_key),
                              node_ca_bundle=str(certificates.trust_bundle))
    with server:
        yield ServicesStack(server, certificates)


RESOURCE_GROUP = LOCAL_RESOURCE_GROUP

ACCOUNT = "localbatch"  # the well-known account, as the management plane names it
IMAGE = arm.ImageReference(publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts",
                           version="latest")


def arm_pool(identities: Iterable[ManagedIdentity] = (), nodes: int = 1, **properties: Any) -> arm.Pool:
    """A management-plane pool of `nodes` Ubuntu 22.04 nodes holding `identities` (user-assigned)."""
    assigned = {identity.resource_id: arm.UserAssignedIdentities() for identity in identities}
    return arm.Pool(
        identity=arm.BatchPoolIdentity(type="UserAssigned", user_assigned_identities=assigned) if assigned else None,
        properties=arm.PoolProperties(
            vm_size="standard_d2s_v3",
            deployment_configuration=arm.DeploymentConfiguration(virtual_machine_configuration=arm.VirtualMachineConfiguration(
                image_reference=IMAGE, node_agent_sku_id="batch.node.ubuntu 22.04")),
            scale_settings=arm.ScaleSettings(fixed_scale=arm.FixedScaleSettings(target_dedicated_nodes=nodes)),
            **properties))
