"""The synthesized template's properties: what each construct must get right, asserted on the
CloudFormation the app deploys (default small layout unless the test says large)."""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import pytest

from infra.index_loader import VISIBILITY_FACTOR
from infra.site import CONTENT_SECURITY_POLICY
from lambdas.index_loader.handler import IndexLoaderSettings
from medsearch.constants import (
    API_GATEWAY_TIMEOUT_S,
    API_KEY_HEADER,
    API_PREFIX,
    API_STAGE,
    INDEX_LOADER_HANDLER,
    INDEX_LOADER_SERVICE,
    LAMBDA_RUNTIME,
    LIVE_MODEL_KEY,
    METRICS_NAMESPACE,
    SEARCH_API_HANDLER,
    SEARCH_API_SERVICE,
    TRANSFORM_OUTPUT_SUFFIX,
    VECTORS_PREFIX,
)
from medsearch.settings import ServiceSettings
from tests.infra.cfn import ACCOUNT, REGION, Cfn

DOMAIN = f"arn:aws:es:{REGION}:{ACCOUNT}:domain/medsearch"


def function(cfn: Cfn, handler: str) -> dict[str, Any]:
    """The properties of the project's function with ``handler``."""
    found = [
        props
        for props in (cfn.props(k) for k in cfn.of_type("AWS::Lambda::Function"))
        if props.get("Handler") == handler
    ]
    assert len(found) == 1
    return found[0]


def bucket_named(cfn: Cfn, part: str) -> tuple[str, dict[str, Any]]:
    logical = cfn.logical_id_of("AWS::S3::Bucket", part)
    return logical, cfn.props(logical)


# --- storage ----------------------------------------------------------------------------------


def test_every_bucket_is_private_encrypted_and_tls_only(small: Cfn) -> None:
    buckets = small.of_type("AWS::S3::Bucket")
    assert len(buckets) == 4
    policies = {
        small.resolve(p["Properties"]["Bucket"]): p["Properties"]["PolicyDocument"]["Statement"]
        for p in small.of_type("AWS::S3::BucketPolicy").values()
    }
    for logical, resource in buckets.items():
        props = resource["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }, logical
        sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert sse[0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256", logical
        denies = [s for s in policies[logical] if s["Effect"] == "Deny"]
        assert {"Bool": {"aws:SecureTransport": "false"}} in [s["Condition"] for s in denies]
        assert {"NumericLessThan": {"s3:TlsVersion": 1.2}} in [s["Condition"] for s in denies]


def test_data_and_artifacts_are_versioned_and_log_their_access(small: Cfn) -> None:
    logs, _ = bucket_named(small, "Logs")
    for part, versioned in (("Data", True), ("Artifacts", True), ("Site", False)):
        _, props = bucket_named(small, part)
        assert (props.get("VersioningConfiguration") == {"Status": "Enabled"}) is versioned
        assert small.resolve(props["LoggingConfiguration"]["DestinationBucketName"]) == logs


def test_lifecycle_rules_expire_job_outputs_old_vectors_and_old_versions(small: Cfn) -> None:
    _, artifacts = bucket_named(small, "Artifacts")
    rules = {r["Id"]: r for r in artifacts["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-job-outputs"]["Prefix"] == "jobs/"
    assert rules["expire-job-outputs"]["ExpirationInDays"] == 30
    assert rules["expire-old-vectors"]["Prefix"] == VECTORS_PREFIX
    assert rules["expire-old-vectors"]["ExpirationInDays"] == 180
    assert rules["housekeeping"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 90}
    assert rules["housekeeping"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}


# --- search domain ----------------------------------------------------------------------------


def test_domain_is_opensearch_2_19_https_tls12_and_encrypted(small: Cfn) -> None:
    _, domain = small.one("AWS::OpenSearchService::Domain")
    assert domain["EngineVersion"] == "OpenSearch_2.19"
    assert domain["DomainName"] == "medsearch"
    assert domain["DomainEndpointOptions"] == {
        "EnforceHTTPS": True,
        "TLSSecurityPolicy": "Policy-Min-TLS-1-2-2019-07",
    }
    assert domain["NodeToNodeEncryptionOptions"] == {"Enabled": True}
    assert domain["EncryptionAtRestOptions"] == {"Enabled": True}
    # Error logs only: slow logs would record query and caption text.
    assert set(domain["LogPublishingOptions"]) == {"ES_APPLICATION_LOGS"}


def test_small_layout_is_one_node_without_masters_and_large_is_multi_az_with_standby(
    small: Cfn, large: Cfn
) -> None:
    _, small_domain = small.one("AWS::OpenSearchService::Domain")
    cluster = small_domain["ClusterConfig"]
    assert cluster["InstanceType"] == "t3.medium.search" and cluster["InstanceCount"] == 1
    assert cluster["DedicatedMasterEnabled"] is False
    assert cluster["ZoneAwarenessEnabled"] is False
    assert small_domain["EBSOptions"]["VolumeType"] == "gp3"
    _, large_domain = large.one("AWS::OpenSearchService::Domain")
    cluster = large_domain["ClusterConfig"]
    assert cluster["InstanceCount"] == 3 and cluster["InstanceType"] == "r7g.large.search"
    assert cluster["MultiAZWithStandbyEnabled"] is True
    assert cluster["ZoneAwarenessConfig"] == {"AvailabilityZoneCount": 3}
    assert cluster["DedicatedMasterCount"] == 3
    assert large_domain["EBSOptions"]["VolumeSize"] == 100


def policy_of(cfn: Cfn) -> list[dict[str, Any]]:
    _, domain = cfn.one("AWS::OpenSearchService::Domain")
    return cfn.resolve(domain["AccessPolicies"])["Statement"]


def role_arn(cfn: Cfn, part: str) -> str:
    return cfn.arn(cfn.logical_id_of("AWS::IAM::Role", part))


def test_the_search_role_may_only_post_to_the_aliases_read_endpoints(small: Cfn) -> None:
    search = role_arn(small, "SearchRole")
    mine = [s for s in policy_of(small) if s["Principal"]["AWS"] == search]
    assert mine == [
        {
            "Sid": "SearchApiReadsTheAlias",
            "Effect": "Allow",
            "Principal": {"AWS": search},
            "Action": "es:ESHttpPost",
            "Resource": [
                f"{DOMAIN}/medsearch/_search",
                f"{DOMAIN}/medsearch/_msearch",
                f"{DOMAIN}/medsearch/_mget",
                f"{DOMAIN}/medsearch/_count",
            ],
        }
    ]


def test_the_loader_role_owns_run_indexes_and_moves_the_alias(small: Cfn) -> None:
    loader = role_arn(small, "LoaderRole")
    grants = {
        s["Sid"]: (s["Action"], s["Resource"])
        for s in policy_of(small)
        if s["Principal"]["AWS"] == loader
    }
    assert grants == {
        "LoaderOwnsRunIndexes": (
            ["es:ESHttpGet", "es:ESHttpHead", "es:ESHttpPost", "es:ESHttpPut", "es:ESHttpDelete"],
            f"{DOMAIN}/medsearch-*",
        ),
        "LoaderMovesTheAlias": ("es:ESHttpPost", f"{DOMAIN}/_aliases"),
        "LoaderReadsVersionAndAlias": (
            "es:ESHttpGet",
            [DOMAIN, f"{DOMAIN}/", f"{DOMAIN}/_alias/medsearch"],
        ),
    }
    # No statement of the small layout grants anyone else, or anything cluster-wide.
    assert {s["Principal"]["AWS"] for s in policy_of(small)} == {
        loader,
        role_arn(small, "SearchRole"),
    }


def test_operator_roles_from_context_get_the_data_plane(large: Cfn) -> None:
    ops = [s for s in policy_of(large) if s["Sid"] == "OperatorsAdminister"]
    assert ops == [
        {
            "Sid": "OperatorsAdminister",
            "Effect": "Allow",
            "Principal": {"AWS": ["arn:aws:iam::123456789012:role/ops"]},
            "Action": "es:ESHttp*",
            "Resource": f"{DOMAIN}/*",
        }
    ]


def test_no_function_role_has_an_identity_grant_on_the_domain(small: Cfn) -> None:
    # The domain's resource policy is the one place OpenSearch access is granted.
    for policy in small.of_type("AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"]
            actions = [actions] if isinstance(actions, str) else actions
            assert not [a for a in actions if a.startswith("es:")], statement


# --- index loader -----------------------------------------------------------------------------


def test_the_loader_queue_outlives_six_function_timeouts_and_redrives_to_a_dlq(
    small: Cfn,
) -> None:
    loader = function(small, INDEX_LOADER_HANDLER)
    queue_id = small.logical_id_of("AWS::SQS::Queue", "IndexLoaderQueue")
    dlq_id = small.logical_id_of("AWS::SQS::Queue", "DeadLetters")
    queue = small.props(queue_id)
    assert queue["VisibilityTimeout"] == VISIBILITY_FACTOR * loader["Timeout"] == 3600
    assert small.resolve(queue["RedrivePolicy"]) == {
        "deadLetterTargetArn": small.arn(dlq_id),
        "maxReceiveCount": 5,
    }
    assert queue["SqsManagedSseEnabled"] is True
    assert small.props(dlq_id)["MessageRetentionPeriod"] == 14 * 24 * 3600
    for queue_policy in small.of_type("AWS::SQS::QueuePolicy").values():
        statements = queue_policy["Properties"]["PolicyDocument"]["Statement"]
        if any(s["Effect"] == "Deny" for s in statements):
            deny = next(s for s in statements if s["Effect"] == "Deny")
            assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    secure = [
        small.resolve(p["Properties"]["Queues"])
        for p in small.of_type("AWS::SQS::QueuePolicy").values()
        if any(s["Effect"] == "Deny" for s in p["Properties"]["PolicyDocument"]["Statement"])
    ]
    assert sorted(q for qs in secure for q in qs) == sorted([dlq_id, queue_id])


def test_the_loader_reads_the_queue_with_partial_batch_responses_and_bounded_concurrency(
    small: Cfn, large: Cfn
) -> None:
    for cfn, concurrency in ((small, 2), (large, 4)):
        _, mapping = cfn.one("AWS::Lambda::EventSourceMapping")
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert mapping["ScalingConfig"] == {"MaximumConcurrency": concurrency}
        assert cfn.resolve(mapping["EventSourceArn"]) == cfn.arn(
            cfn.logical_id_of("AWS::SQS::Queue", "IndexLoaderQueue")
        )
        assert function(cfn, INDEX_LOADER_HANDLER)["ReservedConcurrentExecutions"] == concurrency


def test_transform_outputs_notify_the_loader_queue(small: Cfn) -> None:
    notifications = small.props(
        small.logical_id_of("Custom::S3BucketNotifications", "StorageArtifacts")
    )
    assert small.resolve(notifications["BucketName"]) == bucket_named(small, "Artifacts")[0]
    (config,) = notifications["NotificationConfiguration"]["QueueConfigurations"]
    assert config["Events"] == ["s3:ObjectCreated:*"]
    rules = {r["Name"]: r["Value"] for r in config["Filter"]["Key"]["FilterRules"]}
    assert rules == {"prefix": VECTORS_PREFIX, "suffix": TRANSFORM_OUTPUT_SUFFIX}
    assert small.resolve(config["QueueArn"]) == small.arn(
        small.logical_id_of("AWS::SQS::Queue", "IndexLoaderQueue")
    )


# --- functions: runtime and the environment their settings parse ------------------------------


def resolved_env(cfn: Cfn, handler: str) -> dict[str, str]:
    return cfn.resolve(function(cfn, handler)["Environment"]["Variables"])


@pytest.mark.parametrize(
    ("handler", "settings", "service"),
    [
        (SEARCH_API_HANDLER, ServiceSettings, SEARCH_API_SERVICE),
        (INDEX_LOADER_HANDLER, IndexLoaderSettings, INDEX_LOADER_SERVICE),
    ],
)
def test_every_environment_key_a_function_gets_is_one_its_settings_parse(
    small: Cfn, large: Cfn, handler: str, settings: Any, service: str
) -> None:
    for cfn in (small, large):
        env = resolved_env(cfn, handler)
        fields = {f"MEDSEARCH_{name.upper()}" for name in settings.model_fields}
        ours = {k for k in env if k.startswith("MEDSEARCH_")}
        assert ours <= fields, ours - fields
        required = {
            f"MEDSEARCH_{name.upper()}"
            for name, field in settings.model_fields.items()
            if field.is_required()
        }
        assert required <= ours
        assert env["POWERTOOLS_SERVICE_NAME"] == service
        # The settings parse what the stack sets (the engine/encoder the handler adds itself).
        parsed = settings(
            **{k.removeprefix("MEDSEARCH_").lower(): v for k, v in env.items() if k in ours},
            **({"engine": "opensearch"} if settings is ServiceSettings else {}),
        )
        assert parsed.opensearch_url.startswith("https://")
        assert parsed.opensearch_index == "medsearch"


def test_the_loader_gets_replicas_and_zones_from_the_layout(small: Cfn, large: Cfn) -> None:
    small_env = resolved_env(small, INDEX_LOADER_HANDLER)
    large_env = resolved_env(large, INDEX_LOADER_HANDLER)
    assert (small_env["MEDSEARCH_REPLICAS"], small_env["MEDSEARCH_AWARENESS_ZONES"]) == ("0", "1")
    # Multi-AZ with standby: three copies, one per zone.
    assert (large_env["MEDSEARCH_REPLICAS"], large_env["MEDSEARCH_AWARENESS_ZONES"]) == ("2", "3")
    assert large_env["POWERTOOLS_METRICS_NAMESPACE"] == METRICS_NAMESPACE
    # Each run's manifest beside its vectors, where the pipeline's Plan step writes it; the
    # pipeline publishes a run after checking it, not the loader by itself.
    artifacts = bucket_named(small, "Artifacts")[0]
    assert (
        small_env["MEDSEARCH_MANIFEST_URL"] == f"s3://{artifacts}/vectors/{{run_id}}/manifest.jsonl"
    )
    assert small_env["MEDSEARCH_AUTO_PUBLISH"] == "false"


def test_the_search_function_reads_its_model_from_the_artifacts_bucket_prefix(
    small: Cfn, large: Cfn
) -> None:
    # Without a model from context: the live model the pipeline publishes.
    live = resolved_env(small, SEARCH_API_HANDLER)["MEDSEARCH_MODEL"]
    assert live == f"s3://{bucket_named(small, 'Artifacts')[0]}/{LIVE_MODEL_KEY}"
    artifacts = bucket_named(large, "Artifacts")[0]
    env = resolved_env(large, SEARCH_API_HANDLER)
    assert env["MEDSEARCH_MODEL"] == f"s3://{artifacts}/models/run-7/onnx"
    role = large.logical_id_of("AWS::IAM::Role", "SearchRole")
    statements = [
        s
        for p in large.of_type("AWS::IAM::Policy").values()
        if role in json.dumps(p["Properties"]["Roles"])
        for s in large.resolve(p["Properties"]["PolicyDocument"]["Statement"])
    ]
    object_reads = [s["Resource"] for s in statements if "s3:GetObject*" in s["Action"]]
    flat = [
        r
        for resources in object_reads
        for r in (resources if isinstance(resources, list) else [resources])
    ]
    assert f"arn:aws:s3:::{artifacts}/models/run-7/onnx/*" in flat
    # Read-only: nothing in the search role writes or deletes.
    for statement in statements:
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        assert not [a for a in actions if a.startswith("s3:") and ("Put" in a or "Delete" in a)]


def test_functions_run_on_the_current_runtime_with_json_logs_and_timeouts(small: Cfn) -> None:
    search = function(small, SEARCH_API_HANDLER)
    loader = function(small, INDEX_LOADER_HANDLER)
    for props in (search, loader):
        assert props["Runtime"] == LAMBDA_RUNTIME
        assert props["LoggingConfig"]["LogFormat"] == "JSON"
        assert props["TracingConfig"] == {"Mode": "Active"}
    assert search["Timeout"] == int(API_GATEWAY_TIMEOUT_S)
    assert search["SnapStart"] == {"ApplyOn": "PublishedVersions"}
    assert search["MemorySize"] == 2048
    # SnapStart allows no more than 512 MB of /tmp.
    assert search["EphemeralStorage"] == {"Size": 512}


# --- search API -------------------------------------------------------------------------------


def test_the_stage_throttles_logs_access_without_queries_and_needs_keys(small: Cfn) -> None:
    _, stage = small.one("AWS::ApiGateway::Stage")
    assert stage["StageName"] == API_STAGE
    (settings,) = stage["MethodSettings"]
    assert (settings["ThrottlingRateLimit"], settings["ThrottlingBurstLimit"]) == (50, 100)
    assert settings["LoggingLevel"] == "ERROR" and settings["DataTraceEnabled"] is False
    log_group = small.logical_id_of("AWS::Logs::LogGroup", "AccessLogs")
    assert small.resolve(stage["AccessLogSetting"]["DestinationArn"]) == small.arn(log_group)
    access_format = json.loads(stage["AccessLogSetting"]["Format"])
    # A query is medical text: neither the query string nor the path with it is logged.
    assert "$context.resourcePath" in access_format.values()
    assert not [v for v in access_format.values() if "querystring" in v.lower()]
    methods = small.of_type("AWS::ApiGateway::Method")
    assert methods and all(m["Properties"]["ApiKeyRequired"] for m in methods.values())
    # The gateway calls the published alias (SnapStart applies to versions only).
    alias = small.logical_id_of("AWS::Lambda::Alias", "Live")
    assert all(alias in json.dumps(m["Properties"]["Integration"]) for m in methods.values())


def test_usage_plans_meter_customers_and_the_site_separately(small: Cfn, large: Cfn) -> None:
    plans = {k: v["Properties"] for k, v in small.of_type("AWS::ApiGateway::UsagePlan").items()}
    customers = next(p for k, p in plans.items() if "Customers" in k)
    site = next(p for k, p in plans.items() if "Site" in k)
    assert customers["Quota"] == {"Limit": 10_000, "Period": "DAY"}
    assert customers["Throttle"] == {"BurstLimit": 20, "RateLimit": 10}
    assert "Quota" not in site and site["Throttle"] == {"BurstLimit": 40, "RateLimit": 20}
    # The site's key value is a deploy-time reference to a generated secret, not a literal.
    _, key = small.one("AWS::ApiGateway::ApiKey")
    secret = small.logical_id_of("AWS::SecretsManager::Secret", "SiteKey")
    assert small.resolve(key["Value"]) == f"{{{{resolve:secretsmanager:{secret}:SecretString:::}}}}"
    # One key per customer named in context, all in the customers' plan.
    keys = large.of_type("AWS::ApiGateway::ApiKey")
    assert len(keys) == 3
    names = sorted(large.resolve(k["Properties"]["Name"]) for k in keys.values())
    assert names == ["medsearch-acme", "medsearch-globex", "medsearch-site"]
    plan_keys = [
        large.resolve(k["Properties"])
        for k in large.of_type("AWS::ApiGateway::UsagePlanKey").values()
    ]
    customers_plan = large.logical_id_of("AWS::ApiGateway::UsagePlan", "Customers")
    assert sum(k["UsagePlanId"] == customers_plan for k in plan_keys) == 2


def test_cors_allows_only_the_site_origin(small: Cfn) -> None:
    env = resolved_env(small, SEARCH_API_HANDLER)
    distribution = small.logical_id_of("AWS::CloudFront::Distribution", "Distribution")
    assert env["MEDSEARCH_CORS_ORIGINS"] == f"https://{distribution}.DomainName"
    assert ServiceSettings(cors_origins=env["MEDSEARCH_CORS_ORIGINS"]).cors_origins == [
        f"https://{distribution}.DomainName"
    ]


def test_result_image_links_point_at_the_site_origin_not_the_request_host(small: Cfn) -> None:
    from medsearch.api import image_url_for
    from medsearch.index.base import Document

    env = resolved_env(small, SEARCH_API_HANDLER)
    distribution = small.logical_id_of("AWS::CloudFront::Distribution", "Distribution")
    settings = ServiceSettings(image_base_url=env["MEDSEARCH_IMAGE_BASE_URL"])
    link = image_url_for(settings)
    assert link is not None
    document = Document("MPX1_synpic2", "c", None, image="data/images/x.jpg")
    assert link(document) == (
        f"https://{distribution}.DomainName/{API_STAGE}{API_PREFIX}/images/MPX1_synpic2/file"
    )
    # ...on the path the distribution caches images under (CloudFront's * matches any part)
    path = link(document).removeprefix(f"https://{distribution}.DomainName")
    patterns = [b["PathPattern"] for b in distribution_config(small)["CacheBehaviors"]]
    assert next(p for p in patterns if fnmatch.fnmatchcase(path, p)).endswith("/images/*")


# --- site -------------------------------------------------------------------------------------


def distribution_config(cfn: Cfn) -> dict[str, Any]:
    _, props = cfn.one("AWS::CloudFront::Distribution")
    return props["DistributionConfig"]


def test_cloudfront_reads_the_site_bucket_through_origin_access_control(small: Cfn) -> None:
    config = distribution_config(small)
    oac = small.logical_id_of("AWS::CloudFront::OriginAccessControl", "")
    s3_origin = next(o for o in config["Origins"] if "S3OriginConfig" in o)
    assert small.resolve(s3_origin["OriginAccessControlId"]) == f"{oac}.Id"
    assert s3_origin["S3OriginConfig"] == {"OriginAccessIdentity": ""}
    site, _ = bucket_named(small, "Site")
    policy = next(
        p["Properties"]["PolicyDocument"]["Statement"]
        for p in small.of_type("AWS::S3::BucketPolicy").values()
        if small.resolve(p["Properties"]["Bucket"]) == site
    )
    reads = [s for s in policy if s["Effect"] == "Allow"]
    assert [s["Principal"] for s in reads] == [{"Service": "cloudfront.amazonaws.com"}]
    distribution = small.logical_id_of("AWS::CloudFront::Distribution", "Distribution")
    assert distribution in json.dumps(reads[0]["Condition"])
    assert config["DefaultCacheBehavior"]["ViewerProtocolPolicy"] == "redirect-to-https"
    assert config["Logging"]["Prefix"] == "cloudfront/"


def test_the_api_behind_the_site_gets_the_site_key_and_is_never_cached(small: Cfn) -> None:
    config = distribution_config(small)
    images, behaviour = config["CacheBehaviors"]  # in this order: the first match wins
    assert behaviour["PathPattern"] == f"/{API_STAGE}/*"
    # the path the API's image links use, so result thumbnails are kept at the edge
    assert images["PathPattern"] == f"/{API_STAGE}{API_PREFIX}/images/*"
    assert images["TargetOriginId"] == behaviour["TargetOriginId"]
    assert images["AllowedMethods"] == ["GET", "HEAD", "OPTIONS"]
    # Image files are kept as long as their Cache-Control says; anything silent is not kept.
    image_policy = small.props(small.resolve(images["CachePolicyId"]))["CachePolicyConfig"]
    assert (image_policy["DefaultTTL"], image_policy["MinTTL"]) == (0, 0)
    assert image_policy["MaxTTL"] == 24 * 3600
    assert image_policy["ParametersInCacheKeyAndForwardedToOrigin"]["QueryStringsConfig"] == {
        "QueryStringBehavior": "all"
    }
    assert behaviour["ViewerProtocolPolicy"] == "https-only"
    assert "POST" in behaviour["AllowedMethods"]
    # AWS's managed CachingDisabled policy.
    assert behaviour["CachePolicyId"] == "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"
    origin = next(o for o in config["Origins"] if o["Id"] == behaviour["TargetOriginId"])
    rest_api = small.logical_id_of("AWS::ApiGateway::RestApi", "SearchApi")
    assert small.resolve(origin["DomainName"]) == (f"{rest_api}.execute-api.{REGION}.amazonaws.com")
    assert origin["CustomOriginConfig"]["OriginProtocolPolicy"] == "https-only"
    (header,) = origin["OriginCustomHeaders"]
    secret = small.logical_id_of("AWS::SecretsManager::Secret", "SiteKey")
    assert header["HeaderName"] == API_KEY_HEADER
    assert small.resolve(header["HeaderValue"]) == (
        f"{{{{resolve:secretsmanager:{secret}:SecretString:::}}}}"
    )


def test_the_page_gets_csp_hsts_nosniff_and_frame_deny(small: Cfn) -> None:
    policies = {
        k: v["Properties"]["ResponseHeadersPolicyConfig"]["SecurityHeadersConfig"]
        for k, v in small.of_type("AWS::CloudFront::ResponseHeadersPolicy").items()
    }
    page = next(v for k, v in policies.items() if "PageHeaders" in k)
    csp = page["ContentSecurityPolicy"]["ContentSecurityPolicy"]
    assert csp == CONTENT_SECURITY_POLICY
    assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    for headers in policies.values():
        assert headers["StrictTransportSecurity"]["AccessControlMaxAgeSec"] == 365 * 24 * 3600
        assert headers["ContentTypeOptions"] == {"Override": True}
        assert headers["FrameOptions"] == {"FrameOption": "DENY", "Override": True}
    default = distribution_config(small)["DefaultCacheBehavior"]
    page_policy = next(k for k in policies if "PageHeaders" in k)
    assert small.resolve(default["ResponseHeadersPolicyId"]) == page_policy


def test_config_json_names_the_api_on_the_site_origin_at_deploy_time(small: Cfn) -> None:
    _, deployment = small.one("Custom::CDKBucketDeployment")
    distribution = small.logical_id_of("AWS::CloudFront::Distribution", "Distribution")
    markers = small.resolve(deployment["SourceMarkers"])
    assert {f"https://{distribution}.DomainName/{API_STAGE}"} <= {
        str(v).strip('"') for marker in markers for v in marker.values()
    }
    assert small.resolve(deployment["DistributionPaths"]) == ["/*"]
    assert deployment["Prune"] is True


# --- alarms -----------------------------------------------------------------------------------


def alarms(cfn: Cfn) -> dict[str, dict[str, Any]]:
    return {
        p["MetricName"]: p
        for p in (
            cfn.resolve(v["Properties"]) for v in cfn.of_type("AWS::CloudWatch::Alarm").values()
        )
    }


def test_alarms_cover_api_loader_and_domain_and_notify_the_topic(small: Cfn, large: Cfn) -> None:
    found = alarms(small)
    assert set(found) >= {
        "5XXError",
        "Latency",
        "ApproximateNumberOfMessagesVisible",
        "ClusterStatus.red",
        "ClusterStatus.yellow",
        "FreeStorageSpace",
        "JVMMemoryPressure",
        "Errors",
    }
    topic = small.logical_id_of("AWS::SNS::Topic", "Alarms")
    for alarm in found.values():
        assert alarm["AlarmActions"] == [topic] and alarm["OKActions"] == [topic]
    # 25 % of the 20 GiB volume, in MiB (the metric's unit).
    assert found["FreeStorageSpace"]["Threshold"] == 20 * 1024 * 0.25
    assert found["FreeStorageSpace"]["ComparisonOperator"] == "LessThanOrEqualToThreshold"
    dlq = small.logical_id_of("AWS::SQS::Queue", "DeadLetters")
    assert found["ApproximateNumberOfMessagesVisible"]["Dimensions"] == [
        {"Name": "QueueName", "Value": f"{dlq}.QueueName"}
    ]
    # With a topic from context, alarms go there and the stack makes none of its own.
    assert not [k for k in large.of_type("AWS::SNS::Topic") if k.startswith("Alarms")]
    for alarm in alarms(large).values():
        assert alarm["AlarmActions"] == ["arn:aws:sns:eu-west-1:123456789012:on-call"]
    assert alarms(large)["FreeStorageSpace"]["Threshold"] == 100 * 1024 * 0.25


# --- training ---------------------------------------------------------------------------------


def test_sagemaker_jobs_get_a_role_of_their_own_and_the_source_archives(small: Cfn) -> None:
    role = small.props(small.logical_id_of("AWS::IAM::Role", "TrainingJobRole"))
    (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    outputs = small.template["Outputs"]
    for name in ("TrainingJobSource", "BatchVectorizeSource"):
        url = small.resolve(outputs[name]["Value"])
        # The asset keeps the archive's last suffix; SageMaker unpacks it as a gzipped tar.
        assert url.startswith("s3://cdk-hnb659fds-assets-") and url.endswith(".gz")
