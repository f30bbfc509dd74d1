"""Buckets: data (manifests, images), artifacts (models, vectors, reports), the site, and logs.

Every bucket blocks public access, encrypts with S3-managed keys, refuses non-TLS requests (and
TLS below 1.2) by bucket policy, and logs its access to the logs bucket. Data and artifacts are
versioned, so an overwritten manifest or model can be recovered; lifecycle rules expire job
outputs and old vectors, old versions and abandoned multipart uploads, so storage does not grow
without bound.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.config import DeployConfig
from infra.nag import suppress
from medsearch.constants import VECTORS_PREFIX

# SageMaker job outputs (model.tar.gz copies, checkpoints, transform scratch) under this prefix
# of the artifacts bucket are temporary; the models the API serves live under models/.
JOBS_PREFIX = "jobs/"


class Storage(Construct):
    """The four buckets of the deployment."""

    def __init__(self, scope: Construct, id: str, *, config: DeployConfig) -> None:
        super().__init__(scope, id)
        removal = config.removal_policy
        self.logs = s3.Bucket(
            self,
            "Logs",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            # CloudFront's standard logs are written with an ACL; S3 access logs use the policy.
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-logs", expiration=Duration.days(config.log_retention_days)
                )
            ],
            removal_policy=removal,
        )
        suppress(
            self.logs,
            "AwsSolutions-S1",
            "This is the access-log target of the other buckets and the CDN; logging its own "
            "access would write a log object for every log object.",
        )
        # A new manifest starts a pipeline run through EventBridge (infra/pipeline.py).
        self.data = self._bucket("Data", versioned=True, removal=removal, event_bridge=True)
        self.artifacts = self._bucket(
            "Artifacts",
            versioned=True,
            removal=removal,
            rules=[
                s3.LifecycleRule(
                    id="expire-job-outputs",
                    prefix=JOBS_PREFIX,
                    expiration=Duration.days(config.job_output_retention_days),
                ),
                s3.LifecycleRule(
                    id="expire-old-vectors",
                    prefix=VECTORS_PREFIX,
                    expiration=Duration.days(config.vectors_retention_days),
                ),
            ],
        )
        # The site is rebuilt from web/ by every deploy: no versions to keep.
        self.site = self._bucket("Site", versioned=False, removal=removal)

    def _bucket(
        self,
        id: str,
        *,
        versioned: bool,
        removal: RemovalPolicy,
        rules: list[s3.LifecycleRule] | None = None,
        event_bridge: bool = False,
    ) -> s3.Bucket:
        """A private, encrypted, TLS-only bucket that logs to the logs bucket."""
        housekeeping = s3.LifecycleRule(
            id="housekeeping",
            abort_incomplete_multipart_upload_after=Duration.days(7),
            noncurrent_version_expiration=Duration.days(90) if versioned else None,
        )
        return s3.Bucket(
            self,
            id,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=versioned,
            server_access_logs_bucket=self.logs,
            server_access_logs_prefix=f"s3/{id.lower()}/",
            lifecycle_rules=[housekeeping, *(rules or [])],
            event_bridge_enabled=event_bridge,
            removal_policy=removal,
        )
