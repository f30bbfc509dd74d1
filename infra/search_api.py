"""The public search API: API Gateway (REST) → the search Lambda (FastAPI via Mangum).

- Every method needs an API key. Keys identify and meter clients; they are not authorization
  (the API serves public search). Customers' keys (context ``apiClients``, or keys ops add later)
  share the customers' usage plan (rate, burst, daily quota); the editors' site has a key of its
  own whose value is generated into Secrets Manager, and which CloudFront adds to the requests it
  forwards, so no key is ever in the page.
- The stage throttles all traffic (rate and burst), writes JSON access logs (no query strings: a
  query is medical text), execution logs at ERROR without request data, metrics and traces.
- The function runs the ONNX encoder on the runtime's CPUs, the model read from the artifacts
  bucket (read-only, the model prefix only), images from the data bucket (read-only). Its timeout
  is the gateway's (29 s): a request the gateway has given up on must not keep running. SnapStart
  (context ``snapStart``) snapshots the initialised function (imports, model, ONNX sessions), so
  a cold start restores it instead; the gateway calls the ``live`` alias of the published version.
"""

from __future__ import annotations

import json
from typing import cast

from aws_cdk import Acknowledgment, Aws, Duration, RemovalPolicy, Size, Validations
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from infra.config import DeployConfig
from infra.functions import python_function
from infra.nag import logical_id, suppress
from medsearch.constants import (
    API_GATEWAY_TIMEOUT_S,
    API_STAGE,
    DATA_PREFIX,
    LIVE_MODEL_KEY,
    MODEL_PREFIX,
    SEARCH_API_HANDLER,
    SEARCH_API_PACKAGE_DIR,
    SEARCH_API_SERVICE,
)

LIVE_ALIAS = "live"
# The app's error body (medsearch.api_errors), for the answers the gateway gives itself.
ERROR_TEMPLATE = '{"error": {"code": "%s", "message": %s, "field": null}}'
# Seconds a throttled client is told to wait: the usage plans refill tokens every second. A used
# day's quota resets at 00:00 UTC, which a gateway response cannot compute: an hour is said.
THROTTLED_RETRY_S = 1
QUOTA_RETRY_S = 3600
# How a gateway response names a header it sends.
GATEWAY_HEADER = "gatewayresponse.header."
# A generated key is long and URL-safe (API Gateway needs at least 20 characters).
SITE_KEY_LENGTH = 40


class SearchApi(Construct):
    """The search function, its REST API and stage, the usage plans and the keys."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeployConfig,
        role: iam.Role,
        data: s3.IBucket,
        artifacts: s3.IBucket,
        opensearch_url: str,
    ) -> None:
        super().__init__(scope, id)
        self.environment = {
            "MEDSEARCH_OPENSEARCH_URL": opensearch_url,
            "MEDSEARCH_OPENSEARCH_INDEX": config.alias,
            "MEDSEARCH_AWS_REGION": Aws.REGION,
            "MEDSEARCH_ONNX_INT8": "true" if config.onnx_int8 else "false",
            "POWERTOOLS_SERVICE_NAME": SEARCH_API_SERVICE,
            "POWERTOOLS_LOG_LEVEL": "INFO",
        }
        # A model fixed by context, or the live model the pipeline publishes (models/live.json
        # names its ONNX folder; until the first run, text search only).
        if config.model_prefix:
            prefix = config.model_prefix.strip("/")
            self.environment["MEDSEARCH_MODEL"] = artifacts.s3_url_for_object(prefix)
        else:
            prefix = MODEL_PREFIX.rstrip("/")
            self.environment["MEDSEARCH_MODEL"] = artifacts.s3_url_for_object(LIVE_MODEL_KEY)
        artifacts.grant_read(role, f"{prefix}/*")
        # Result images are served by the API from the corpus in the data bucket.
        data.grant_read(role, f"{DATA_PREFIX}*")
        snap_start = lambda_.SnapStartConf.ON_PUBLISHED_VERSIONS if config.snap_start else None
        self.function = python_function(
            self,
            "Function",
            config=config,
            role=role,
            package=SEARCH_API_PACKAGE_DIR,
            handler=SEARCH_API_HANDLER,
            memory_mib=config.search_memory_mib,
            timeout=Duration.seconds(API_GATEWAY_TIMEOUT_S),
            environment=self.environment,
            description="medsearch search API (FastAPI, ONNX encoder, OpenSearch)",
            snap_start=snap_start,
            ephemeral_storage_size=Size.mebibytes(config.search_tmp_mib),
        )
        self.live = lambda_.Alias(
            self, "Live", alias_name=LIVE_ALIAS, version=self.function.current_version
        )
        Validations.of(self.function).acknowledge(
            Acknowledgment(
                id="Annotation::@aws-cdk/aws-lambda:snapStartRequirePublish",
                reason="The gateway calls the live alias of a published version (current_version; "
                "the pipeline publishes the next one), never $LATEST.",
            )
        )
        suppress(
            role,
            "AwsSolutions-IAM5",
            "Read-only and scoped to prefixes: the corpus (data/*) for result images and the "
            "model's ONNX folder; s3:GetObject*/List* are what grant_read gives.",
            applies_to=[
                "Action::s3:GetBucket*",
                "Action::s3:GetObject*",
                "Action::s3:List*",
                f"Resource::<{logical_id(data)}.Arn>/{DATA_PREFIX}*",
                f"Resource::<{logical_id(artifacts)}.Arn>/{prefix}/*",
            ],
        )

        access_logs = logs.LogGroup(
            self,
            "AccessLogs",
            retention=logs.RetentionDays.THREE_MONTHS,
            removal_policy=config.removal_policy,
        )
        self.api = apigw.LambdaRestApi(
            self,
            "Api",
            handler=self.live,
            proxy=True,
            description="medsearch public search API",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            # Uploads come as multipart bodies and images go back as bytes: base64 both ways.
            binary_media_types=["*/*"],
            cloud_watch_role=True,
            cloud_watch_role_removal_policy=RemovalPolicy.RETAIN,
            default_method_options=apigw.MethodOptions(api_key_required=True),
            deploy_options=apigw.StageOptions(
                stage_name=API_STAGE,
                throttling_rate_limit=config.api_rate_limit,
                throttling_burst_limit=config.api_burst_limit,
                access_log_destination=apigw.LogGroupLogDestination(access_logs),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=False,
                    http_method=True,
                    ip=True,
                    protocol=True,
                    request_time=True,
                    resource_path=True,
                    response_length=True,
                    status=True,
                    user=False,
                ),
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,
                metrics_enabled=True,
                tracing_enabled=True,
            ),
        )
        self.stage = self.api.deployment_stage
        self.customers = self.api.add_usage_plan(
            "Customers",
            description="Customers' API keys: throttled and with a daily quota each",
            throttle=apigw.ThrottleSettings(
                rate_limit=config.customer_rate_limit, burst_limit=config.customer_burst_limit
            ),
            quota=apigw.QuotaSettings(limit=config.customer_quota_per_day, period=apigw.Period.DAY),
            api_stages=[apigw.UsagePlanPerApiStage(api=self.api, stage=self.stage)],
        )
        self.client_keys = {}
        for name in config.api_clients:
            key = apigw.ApiKey(
                self, f"Client{name}", api_key_name=f"{Aws.STACK_NAME}-{name}", enabled=True
            )
            self.customers.add_api_key(key)
            self.client_keys[name] = key

        self.site_key_secret = secretsmanager.Secret(
            self,
            "SiteKey",
            description="API key CloudFront adds to the editors' site's API requests",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=SITE_KEY_LENGTH, exclude_punctuation=True
            ),
        )
        suppress(
            self.site_key_secret,
            "AwsSolutions-SMG4",
            "The value is an API Gateway key that CloudFront sends; a rotation must update the "
            "key and the distribution together, which a redeploy does.",
        )
        # A dynamic reference: CloudFormation resolves it at deploy time, so the value is in
        # neither the template nor the page.
        self.site_key_value = self.site_key_secret.secret_value.unsafe_unwrap()
        site_key = apigw.ApiKey(
            self,
            "SiteApiKey",
            api_key_name=f"{Aws.STACK_NAME}-site",
            value=self.site_key_value,
            enabled=True,
        )
        self.site_plan = self.api.add_usage_plan(
            "Site",
            description="The editors' site (through CloudFront): throttled, no daily quota",
            throttle=apigw.ThrottleSettings(
                rate_limit=config.site_rate_limit, burst_limit=config.site_burst_limit
            ),
            api_stages=[apigw.UsagePlanPerApiStage(api=self.api, stage=self.stage)],
        )
        self.site_plan.add_api_key(site_key)
        self._gateway_responses()
        self._suppress()

    @property
    def execute_api_domain(self) -> str:
        """The API's own host name (built from its id, so the CDN can use it without a cycle)."""
        return f"{self.api.rest_api_id}.execute-api.{Aws.REGION}.{Aws.URL_SUFFIX}"

    def _gateway_responses(self) -> None:
        """The answers the gateway gives without calling the function, in the app's error body.

        Without them a client would parse API Gateway's ``{"message": ...}`` for a missing key, a
        throttled or over-quota key, or a failed integration, and the app's shape for the rest.
        """
        said = {
            "ApiKey": (
                apigw.ResponseType.INVALID_API_KEY,
                403,
                "unauthorized",
                "this API needs a valid x-api-key header",
                {},
            ),
            "NoRoute": (
                apigw.ResponseType.MISSING_AUTHENTICATION_TOKEN,
                404,
                "not_found",
                "no such path (the API's paths are under /v1)",
                {},
            ),
            "Throttled": (
                apigw.ResponseType.THROTTLED,
                429,
                "rate_limited",
                f"too many requests for this key; retry in {THROTTLED_RETRY_S} s",
                {"Retry-After": f"'{THROTTLED_RETRY_S}'"},
            ),
            "QuotaExceeded": (
                apigw.ResponseType.QUOTA_EXCEEDED,
                429,
                "rate_limited",
                "this key's daily quota is used up; it resets at 00:00 UTC",
                {"Retry-After": f"'{QUOTA_RETRY_S}'"},
            ),
            "TooLarge": (
                apigw.ResponseType.REQUEST_TOO_LARGE,
                413,
                "payload_too_large",
                "request body too large: uploads are limited to 10 MB",
                {},
            ),
        }
        self.gateway_responses = [
            self.api.add_gateway_response(
                name,
                type=kind,
                status_code=str(status),
                response_headers=headers or None,
                templates={"application/json": ERROR_TEMPLATE % (code, json.dumps(message))},
            )
            for name, (kind, status, code, message, headers) in said.items()
        ]
        # Anything else the gateway fails with itself (a function error or timeout: 502, 504).
        self.gateway_responses.append(
            self.api.add_gateway_response(
                "Default5xx",
                type=apigw.ResponseType.DEFAULT_5_XX,
                templates={
                    "application/json": ERROR_TEMPLATE
                    % ("unavailable", "$context.error.messageString")
                },
            )
        )

    def serve_site(self, *, origin: str, image_base_url: str) -> None:
        """Let the editors' site at ``origin`` call the API, and build result links from
        ``image_base_url`` (never from a request's Host header).

        The app answers CORS for its own responses; the gateway's answers (a throttled key, a
        body over the limit, a failed integration) carry the same ``Access-Control-Allow-Origin``,
        or a browser would hide their error body and ``Retry-After`` from the page's script.
        """
        for name, value in {
            "MEDSEARCH_CORS_ORIGINS": origin,
            "MEDSEARCH_IMAGE_BASE_URL": image_base_url,
        }.items():
            self.function.add_environment(name, value)
            self.environment[name] = value
        for response in self.gateway_responses:
            cfn = cast(apigw.CfnGatewayResponse, response.node.default_child)
            headers = dict(cast(dict[str, str], cfn.response_parameters or {}))
            # Gateway response header values are static strings in single quotes.
            headers[f"{GATEWAY_HEADER}Access-Control-Allow-Origin"] = f"'{origin}'"
            headers[f"{GATEWAY_HEADER}Access-Control-Expose-Headers"] = "'Retry-After'"
            headers[f"{GATEWAY_HEADER}Vary"] = "'Origin'"
            cfn.response_parameters = headers

    def _suppress(self) -> None:
        """The API's cdk-nag suppressions, each with its reason."""
        suppress(
            self.api,
            "AwsSolutions-APIG2",
            "Requests are validated by the application (FastAPI models): every bad input is a "
            "4xx with a message; a gateway validator would duplicate the OpenAPI schema.",
        )
        suppress(
            self.api,
            "AwsSolutions-APIG4",
            "Public search by design: API keys identify and meter clients through usage plans; "
            "there is nothing private to authorize.",
        )
        suppress(
            self.api,
            "AwsSolutions-COG4",
            "Public search by design (see APIG4): no Cognito users.",
        )
        suppress(
            self.api,
            "AwsSolutions-APIG3",
            "Throttling on the stage and per-key usage plans bound the traffic; a WAF web ACL "
            "costs more than the small deployment's API and can be attached later.",
        )
        suppress(
            self.api,
            "AwsSolutions-IAM4",
            "API Gateway's account-level CloudWatch role uses AWS's managed push-to-logs "
            "policy (AmazonAPIGatewayPushToCloudWatchLogs), the documented way to enable logs.",
            applies_to=[
                "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                "AmazonAPIGatewayPushToCloudWatchLogs"
            ],
        )
