"""What SageMaker jobs need: the source archives as assets and the role the jobs run with.

The training job reads the corpus (data bucket, read-only) and writes the model, its ONNX export
and report under ``models/`` and its scratch under ``jobs/`` of the artifacts bucket; the batch
transform reads the model and writes vectors under ``vectors/``. The pipeline that starts the jobs
passes this role; the archives come from ``make sagemaker-sources`` (no torch at synth).
"""

from __future__ import annotations

from aws_cdk import Aws
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_assets as assets
from constructs import Construct

from infra.nag import logical_id, suppress
from infra.sources import ENTRIES, archive_path
from infra.storage import JOBS_PREFIX
from medsearch.constants import DATA_PREFIX, MODEL_PREFIX, VECTORS_PREFIX


class MissingSourcesError(FileNotFoundError):
    """A source archive that ``make sagemaker-sources`` has not built."""


class Training(Construct):
    """The SageMaker execution role and the uploaded source archives."""

    def __init__(
        self, scope: Construct, id: str, *, data: s3.IBucket, artifacts: s3.IBucket
    ) -> None:
        super().__init__(scope, id)
        self.role = iam.Role(
            self,
            "JobRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="medsearch SageMaker training and batch transform jobs",
        )
        self.sources: dict[str, assets.Asset] = {}
        for entry in ENTRIES:
            path = archive_path(entry)
            if not path.is_file():
                raise MissingSourcesError(f"{path} is missing: run `make sagemaker-sources`")
            asset = assets.Asset(self, f"{entry}-source", path=str(path))
            asset.grant_read(self.role)
            self.sources[entry] = asset
        data.grant_read(self.role, f"{DATA_PREFIX}*")
        for prefix in (MODEL_PREFIX, VECTORS_PREFIX, JOBS_PREFIX):
            artifacts.grant_read_write(self.role, f"{prefix}*")
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="JobLogs",
                actions=[
                    "logs:CreateLogGroup",
                    "logs:CreateLogStream",
                    "logs:PutLogEvents",
                    "logs:DescribeLogStreams",
                ],
                resources=[
                    f"arn:{Aws.PARTITION}:logs:{Aws.REGION}:{Aws.ACCOUNT_ID}:log-group:"
                    "/aws/sagemaker/*"
                ],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="JobMetrics",
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}},
            )
        )
        # The framework containers (PyTorch / Hugging Face) come from AWS's ECR registries.
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="PullFrameworkImages",
                actions=["ecr:GetAuthorizationToken"],
                resources=["*"],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="PullFrameworkLayers",
                actions=[
                    "ecr:BatchCheckLayerAvailability",
                    "ecr:GetDownloadUrlForLayer",
                    "ecr:BatchGetImage",
                ],
                resources=[f"arn:{Aws.PARTITION}:ecr:{Aws.REGION}:*:repository/*"],
            )
        )
        suppress(
            self.role,
            "AwsSolutions-IAM5",
            "Prefix-scoped S3 grants (data/*, models/*, vectors/*, jobs/*, the CDK asset "
            "objects); SageMaker's own log groups and metric namespace; ECR's token call has "
            "no resource, and the framework images live in AWS-owned accounts per region.",
            applies_to=[
                "Action::s3:GetBucket*",
                "Action::s3:GetObject*",
                "Action::s3:List*",
                "Action::s3:DeleteObject*",
                "Action::s3:Abort*",
                "Resource::*",
                f"Resource::<{logical_id(data)}.Arn>/{DATA_PREFIX}*",
                *(
                    f"Resource::<{logical_id(artifacts)}.Arn>/{p}*"
                    for p in (MODEL_PREFIX, VECTORS_PREFIX, JOBS_PREFIX)
                ),
                "Resource::arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:log-group:"
                "/aws/sagemaker/*",
                "Resource::arn:<AWS::Partition>:ecr:<AWS::Region>:*:repository/*",
                "Resource::arn:<AWS::Partition>:s3:::cdk-hnb659fds-assets-<AWS::AccountId>-"
                "<AWS::Region>/*",
            ],
        )
