"""The medsearch stack: storage, the search domain, the loader, the search API, the site, the
SageMaker role and sources, and the alarms, wired together.

Roles come first because the domain's access policy names them; the functions come after the
domain because they are given its endpoint. The API's CORS origin is the site's, which CloudFront
only knows once the API exists: the distribution takes the API's host from its id (not from the
stage URL), so the function can take the site's origin without a dependency cycle.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack, Tags
from constructs import Construct

from infra.alarms import Alarms
from infra.config import DeployConfig
from infra.functions import lambda_role
from infra.index_loader import IndexLoader
from infra.nag import logical_id, suppress
from infra.pipeline import Pipeline, pipeline_function
from infra.search_api import SearchApi
from infra.search_domain import SearchDomain
from infra.site import Site
from infra.storage import Storage
from infra.training import Training
from medsearch.constants import API_PREFIX, PROJECT


class MedsearchStack(Stack):
    """Everything medsearch runs on in one AWS account and region."""

    def __init__(self, scope: Construct, id: str, *, config: DeployConfig, **kwargs: Any) -> None:
        super().__init__(scope, id, description="medsearch: medical image search", **kwargs)
        Tags.of(self).add("project", PROJECT)
        self.config = config
        self.storage = Storage(self, "Storage", config=config)
        loader_role = lambda_role(self, "LoaderRole", description="medsearch index loader")
        search_role = lambda_role(self, "SearchRole", description="medsearch search API")
        self.search_domain = SearchDomain(
            self,
            "Search",
            config=config,
            loader_role=loader_role,
            search_role=search_role,
        )
        url = self.search_domain.endpoint_url
        self.loader = IndexLoader(
            self,
            "IndexLoader",
            config=config,
            role=loader_role,
            artifacts=self.storage.artifacts,
            opensearch_url=url,
        )
        self.api = SearchApi(
            self,
            "SearchApi",
            config=config,
            role=search_role,
            data=self.storage.data,
            artifacts=self.storage.artifacts,
            opensearch_url=url,
        )
        self.site = Site(
            self,
            "Site",
            bucket=self.storage.site,
            logs=self.storage.logs,
            api_domain=self.api.execute_api_domain,
            api_key=self.api.site_key_value,
        )
        # Links in answers come from settings, never from a request's Host header: result
        # images are served through the site's origin (which adds the site's key, and caches
        # them at the edge), so they load in the page under its CSP and in customers' clients
        # without a key.
        self.api.serve_site(
            origin=self.site.url,
            image_base_url=f"{self.site.api_url}{API_PREFIX}/images/{{image_id}}/file",
        )
        self.training = Training(
            self, "Training", data=self.storage.data, artifacts=self.storage.artifacts
        )
        self.pipeline_function = pipeline_function(
            self,
            config=config,
            data=self.storage.data,
            artifacts=self.storage.artifacts,
            sagemaker=self.training,
        )
        self.pipeline = Pipeline(
            self,
            "Pipeline",
            config=config,
            pipeline_function=self.pipeline_function,
            loader_function=self.loader.function,
            search_function=self.api.function,
            search_alias=self.api.live,
            sagemaker_role=self.training.role,
            data=self.storage.data,
            artifacts=self.storage.artifacts,
        )
        self.alarms = Alarms(
            self,
            "Alarms",
            config=config,
            stage=self.api.stage,
            search_function=self.api.function,
            loader_function=self.loader.function,
            dead_letters=self.loader.dead_letters,
            domain=self.search_domain.domain,
        )
        self._cdk_handlers()
        self._outputs()

    def _outputs(self) -> None:
        """What ops need after a deploy: where to upload, where to look, what to call."""
        outputs = {
            "SiteUrl": (self.site.url, "The editors' page"),
            "ApiUrl": (self.api.api.url, "The search API (send x-api-key)"),
            "DataBucket": (self.storage.data.bucket_name, "Upload the corpus under data/"),
            "ArtifactsBucket": (self.storage.artifacts.bucket_name, "Models and vectors"),
            "DomainEndpoint": (self.search_domain.endpoint_url, "OpenSearch endpoint"),
            "LoaderQueue": (self.loader.queue.queue_url, "Transform outputs to load"),
            "LoaderDeadLetters": (self.loader.dead_letters.queue_url, "Outputs not loaded"),
            "CustomersUsagePlan": (self.api.customers.usage_plan_id, "Add customers' keys"),
            "AlarmTopic": (self.alarms.topic.topic_arn, "Subscribe to the alarms"),
            "SageMakerRole": (self.training.role.role_arn, "Role for training/transform jobs"),
            "PipelineArn": (
                self.pipeline.state_machine.state_machine_arn,
                "The training pipeline (medsearch aws start-pipeline)",
            ),
            "RunsTopic": (self.pipeline.topic.topic_arn, "Subscribe to pipeline runs"),
            **{
                f"{entry.title().replace('_', '')}Source": (asset.s3_object_url, f"{entry} code")
                for entry, asset in self.training.sources.items()
            },
        }
        for name, (value, description) in outputs.items():
            CfnOutput(self, name, value=value, description=description)

    def _cdk_handlers(self) -> None:
        """Acknowledge findings on the Lambda functions CDK itself adds (S3 bucket notifications,
        the page's BucketDeployment, the domain's log resource policy): their code, runtime and
        roles are CDK's, and each is scoped by CDK to what it does."""
        basic = (
            "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
        )
        site = logical_id(self.storage.site)
        assets = "arn:<AWS::Partition>:s3:::cdk-hnb659fds-assets-<AWS::AccountId>-<AWS::Region>/*"
        reason = (
            "A Lambda function of CDK's own ({what}); CDK writes its role and runtime, scoped to "
            "that one task."
        )
        handlers = {
            "BucketNotificationsHandler": ("S3 bucket notifications", [("IAM4", basic)]),
            "AWS679f53fac002430cb0da5b7982bd2287": (
                "the domain's CloudWatch Logs resource policy",
                [("IAM4", basic)],
            ),
            "Custom::CDKBucketDeployment": (
                "BucketDeployment of the page",
                [
                    ("IAM4", basic),
                    *(
                        ("IAM5", f"Action::s3:{action}*")
                        for action in ("GetObject", "GetBucket", "List", "DeleteObject", "Abort")
                    ),
                    ("IAM5", f"Resource::{assets}"),
                    ("IAM5", f"Resource::<{site}.Arn>/*"),
                    ("IAM5", "Resource::*"),
                ],
            ),
        }
        for child in self.node.children:
            for prefix, (what, findings) in handlers.items():
                if child.node.id.startswith(prefix):
                    for rule, finding in findings:
                        suppress(
                            child,
                            f"AwsSolutions-{rule}",
                            reason.format(what=what),
                            applies_to=[finding],
                        )
                    suppress(child, "AwsSolutions-L1", reason.format(what=what))
        for child in self.search_domain.domain.node.children:
            if child.node.id.startswith("ESLogGroupPolicy"):
                suppress(
                    child,
                    "AwsSolutions-IAM5",
                    reason.format(what="the domain's CloudWatch Logs resource policy"),
                    applies_to=["Resource::*"],
                )
