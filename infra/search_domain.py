"""The Amazon OpenSearch Service domain and the two roles' access to it.

The domain runs OpenSearch 2.19 (k-NN with the lucene engine, BM25 on captions) with HTTPS only
(TLS 1.2+), node-to-node and at-rest encryption, and an IAM access policy: every request is SigV4
signed by a function's role, and the domain's resource-based policy says exactly which HTTP
methods on which paths each role may use (OpenSearch Service matches ``es:ESHttp<Method>`` and
``arn:…:domain/<name>/<path>``):

- the search API's role may only read: ``POST`` to ``_search``, ``_msearch``, ``_mget`` and
  ``_count`` of the read alias. Hybrid queries send their search pipeline in the request, and
  the index layout is read from the index record with ``_mget``, so nothing else is needed;
- the loader's role may create, write, configure and delete the run indexes (``<alias>-*``),
  read the cluster's version (``GET /``) and the alias, and move the alias (``POST _aliases``).

The access policy names the domain by its ARN built from the domain name, not by the domain's own
``Arn`` attribute, so the policy can be part of the domain resource (no custom resource).
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Aws
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_opensearchservice as opensearch
from constructs import Construct

from infra.config import DeployConfig
from infra.nag import suppress

# The search path's reads (medsearch.index.opensearch): every one is a POST.
SEARCH_ACTIONS = ("_search", "_msearch", "_mget", "_count")
# What the loader does to run indexes: create (PUT), load (POST _bulk, PUT _doc), settings,
# refresh, count, mappings and field caps (GET/POST), existence (HEAD), prune (DELETE).
LOADER_INDEX_METHODS = (
    "es:ESHttpGet",
    "es:ESHttpHead",
    "es:ESHttpPost",
    "es:ESHttpPut",
    "es:ESHttpDelete",
)


def domain_arn(domain_name: str) -> str:
    """The domain's ARN from its name (a string with the stack's partition, region, account)."""
    return f"arn:{Aws.PARTITION}:es:{Aws.REGION}:{Aws.ACCOUNT_ID}:domain/{domain_name}"


def search_statements(arn: str, alias: str, principal: str) -> list[dict[str, Any]]:
    """The search API role's grant: read the alias through the search endpoints only."""
    return [
        {
            "Sid": "SearchApiReadsTheAlias",
            "Effect": "Allow",
            "Principal": {"AWS": principal},
            "Action": "es:ESHttpPost",
            "Resource": [f"{arn}/{alias}/{action}" for action in SEARCH_ACTIONS],
        }
    ]


def loader_statements(arn: str, alias: str, principal: str) -> list[dict[str, Any]]:
    """The loader role's grant: run indexes, the alias, and the cluster version."""
    return [
        {
            "Sid": "LoaderOwnsRunIndexes",
            "Effect": "Allow",
            "Principal": {"AWS": principal},
            "Action": list(LOADER_INDEX_METHODS),
            "Resource": f"{arn}/{alias}-*",
        },
        {
            "Sid": "LoaderMovesTheAlias",
            "Effect": "Allow",
            "Principal": {"AWS": principal},
            "Action": "es:ESHttpPost",
            "Resource": f"{arn}/_aliases",
        },
        {
            # GET / (the version decides the BM25 scale) is the domain's root path; the ARN with
            # and without the trailing slash, as the data plane names the root either way.
            "Sid": "LoaderReadsVersionAndAlias",
            "Effect": "Allow",
            "Principal": {"AWS": principal},
            "Action": "es:ESHttpGet",
            "Resource": [arn, f"{arn}/", f"{arn}/_alias/{alias}"],
        },
    ]


def admin_statements(arn: str, principals: list[str]) -> list[dict[str, Any]]:
    """Full data-plane access for the operators' roles named in context (none by default)."""
    if not principals:
        return []
    return [
        {
            "Sid": "OperatorsAdminister",
            "Effect": "Allow",
            "Principal": {"AWS": principals},
            "Action": "es:ESHttp*",
            "Resource": f"{arn}/*",
        }
    ]


class SearchDomain(Construct):
    """The OpenSearch Service domain, readable by ``search_role``, loadable by ``loader_role``."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeployConfig,
        loader_role: iam.IRole,
        search_role: iam.IRole,
    ) -> None:
        super().__init__(scope, id)
        removal = config.removal_policy
        app_logs = logs.LogGroup(
            self,
            "AppLogs",
            retention=logs.RetentionDays.THREE_MONTHS,
            removal_policy=removal,
        )
        masters = config.dedicated_masters
        self.domain = opensearch.Domain(
            self,
            "Domain",
            domain_name=config.domain_name,
            version=opensearch.EngineVersion.OPENSEARCH_2_19,
            capacity=opensearch.CapacityConfig(
                data_node_instance_type=config.domain_instance_type,
                data_nodes=config.domain_instance_count,
                master_node_instance_type=config.domain_master_type if masters else None,
                master_nodes=masters or None,
                multi_az_with_standby_enabled=config.domain_standby,
            ),
            ebs=opensearch.EbsOptions(
                volume_size=config.domain_volume_gib, volume_type=ec2.EbsDeviceVolumeType.GP3
            ),
            zone_awareness=opensearch.ZoneAwarenessConfig(
                enabled=config.domain_zones > 1,
                availability_zone_count=config.domain_zones if config.domain_zones > 1 else None,
            ),
            enforce_https=True,
            tls_security_policy=opensearch.TLSSecurityPolicy.TLS_1_2,
            node_to_node_encryption=True,
            encryption_at_rest=opensearch.EncryptionAtRestOptions(enabled=True),
            # Error logs only: slow logs would carry query and caption text (medical text).
            logging=opensearch.LoggingOptions(app_log_enabled=True, app_log_group=app_logs),
            removal_policy=removal,
        )
        self.arn = domain_arn(config.domain_name)
        self.endpoint_url = f"https://{self.domain.domain_endpoint}"
        statements = [
            *search_statements(self.arn, config.alias, search_role.role_arn),
            *loader_statements(self.arn, config.alias, loader_role.role_arn),
            *admin_statements(self.arn, list(config.admin_role_arns)),
        ]
        cfn: opensearch.CfnDomain = self.domain.node.default_child  # type: ignore[assignment]
        cfn.access_policies = {"Version": "2012-10-17", "Statement": statements}
        self._suppress(config)

    def _suppress(self, config: DeployConfig) -> None:
        """The domain's cdk-nag suppressions, each with its reason."""
        suppress(
            self.domain,
            "AwsSolutions-OS1",
            "Public endpoint with an IAM access policy: only SigV4 requests of the two function "
            "roles (and operator roles from context) on the paths listed in the policy are "
            "allowed. A VPC domain would put both functions in a VPC with NAT or endpoints, "
            "which costs more than the whole small deployment.",
        )
        suppress(
            self.domain,
            "AwsSolutions-OS9",
            "Slow search and indexing logs record query and document text, which is medical "
            "text; only the error logs are published.",
            applies_to=["LogExport::SEARCH_SLOW_LOGS", "LogExport::INDEX_SLOW_LOGS"],
        )
        if not config.dedicated_masters:
            suppress(
                self.domain,
                "AwsSolutions-OS3",
                "Small layout (context domainMasterType unset): one data node needs no "
                "dedicated masters; the large layout sets them.",
            )
        if config.domain_zones == 1:
            suppress(
                self.domain,
                "AwsSolutions-OS4",
                "Small layout (context domainZones=1): zone awareness needs two or more data "
                "nodes; the large layout sets domainZones=3.",
            )
            suppress(
                self.domain,
                "AwsSolutions-OS7",
                "Small layout (context domainZones=1): one zone; the large layout spreads "
                "copies over three.",
            )
