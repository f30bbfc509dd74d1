"""The editors' site: ``web/`` in a private bucket behind CloudFront, with the API on its origin.

CloudFront reads the bucket through origin access control (the bucket stays private), answers
HTTPS only (HTTP redirects), and adds security headers to every answer: a CSP that allows only
the site's own origin (scripts, styles, images, and the API, which CloudFront serves under
``/api/*`` from the API's stage), HSTS, no-sniff, frame-deny and a strict referrer policy.
``/api/*`` goes to API Gateway uncached, with the site's API key added as an origin header (a
viewer's own ``x-api-key`` is overwritten), so the page calls the API on its own origin and holds
no key. ``config.json`` names the API's URL; it is written at deploy time with the distribution's
domain, so no manual step is left after ``cdk deploy``.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3deploy
from constructs import Construct

from infra.functions import REPO
from infra.nag import suppress
from medsearch.constants import API_KEY_HEADER, API_PREFIX, API_STAGE

WEB_DIR = REPO / "web"
CONFIG_FILE = "config.json"
# The page's own scripts, styles and images only; uploads are previewed from blob: URLs.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
HSTS_MAX_AGE = Duration.days(365)


def security_headers(csp: str | None) -> cloudfront.ResponseSecurityHeadersBehavior:
    """HSTS, no-sniff, frame-deny and referrer policy, with ``csp`` when it is given."""
    return cloudfront.ResponseSecurityHeadersBehavior(
        content_security_policy=cloudfront.ResponseHeadersContentSecurityPolicy(
            content_security_policy=csp, override=True
        )
        if csp
        else None,
        strict_transport_security=cloudfront.ResponseHeadersStrictTransportSecurity(
            access_control_max_age=HSTS_MAX_AGE,
            include_subdomains=True,
            preload=False,
            override=True,
        ),
        content_type_options=cloudfront.ResponseHeadersContentTypeOptions(override=True),
        frame_options=cloudfront.ResponseHeadersFrameOptions(
            frame_option=cloudfront.HeadersFrameOption.DENY, override=True
        ),
        referrer_policy=cloudfront.ResponseHeadersReferrerPolicy(
            referrer_policy=cloudfront.HeadersReferrerPolicy.STRICT_ORIGIN_WHEN_CROSS_ORIGIN,
            override=True,
        ),
    )


class Site(Construct):
    """CloudFront over the site bucket and the API stage, and the page's deployment."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        bucket: s3.IBucket,
        logs: s3.IBucket,
        api_domain: str,
        api_key: str,
    ) -> None:
        super().__init__(scope, id)
        page_headers = cloudfront.ResponseHeadersPolicy(
            self,
            "PageHeaders",
            comment="medsearch page: CSP, HSTS, no-sniff, frame-deny",
            security_headers_behavior=security_headers(CONTENT_SECURITY_POLICY),
        )
        # The API's answers are JSON and images; its /docs page brings its own scripts, so no
        # page CSP there, the other headers all the same.
        api_headers = cloudfront.ResponseHeadersPolicy(
            self,
            "ApiHeaders",
            comment="medsearch API through the site: HSTS, no-sniff, frame-deny",
            security_headers_behavior=security_headers(None),
        )
        api_origin = origins.HttpOrigin(
            api_domain,
            protocol_policy=cloudfront.OriginProtocolPolicy.HTTPS_ONLY,
            origin_ssl_protocols=[cloudfront.OriginSslPolicy.TLS_V1_2],
            custom_headers={API_KEY_HEADER: api_key},
            read_timeout=Duration.seconds(30),
        )
        api_behaviour = {
            "origin": api_origin,
            "viewer_protocol_policy": cloudfront.ViewerProtocolPolicy.HTTPS_ONLY,
            # API Gateway routes by its own Host header: forward everything else.
            "origin_request_policy": cloudfront.OriginRequestPolicy.ALL_VIEWER_EXCEPT_HOST_HEADER,
            "response_headers_policy": api_headers,
        }
        # Image files say how long they keep (Cache-Control: public, max-age=3600); anything
        # else under /images/ (similar-image searches) says nothing and is not kept.
        images = cloudfront.CachePolicy(
            self,
            "ImageFiles",
            comment="medsearch result images: as long as the API's Cache-Control says",
            default_ttl=Duration.seconds(0),
            min_ttl=Duration.seconds(0),
            max_ttl=Duration.days(1),
            query_string_behavior=cloudfront.CacheQueryStringBehavior.all(),
            enable_accept_encoding_gzip=True,
            enable_accept_encoding_brotli=True,
        )
        self.distribution = cloudfront.Distribution(
            self,
            "Distribution",
            comment="medsearch editors' site",
            default_root_object="index.html",
            default_behavior=cloudfront.BehaviorOptions(
                origin=origins.S3BucketOrigin.with_origin_access_control(bucket),
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                cache_policy=cloudfront.CachePolicy.CACHING_OPTIMIZED,
                response_headers_policy=page_headers,
                compress=True,
            ),
            additional_behaviors={
                # Thumbnails are most of a results page's requests: served from the edge.
                f"/{API_STAGE}{API_PREFIX}/images/*": cloudfront.BehaviorOptions(
                    **api_behaviour,  # type: ignore[arg-type]
                    allowed_methods=cloudfront.AllowedMethods.ALLOW_GET_HEAD_OPTIONS,
                    cache_policy=images,
                ),
                f"/{API_STAGE}/*": cloudfront.BehaviorOptions(
                    **api_behaviour,  # type: ignore[arg-type]
                    allowed_methods=cloudfront.AllowedMethods.ALLOW_ALL,
                    cache_policy=cloudfront.CachePolicy.CACHING_DISABLED,
                ),
            },
            http_version=cloudfront.HttpVersion.HTTP2_AND_3,
            price_class=cloudfront.PriceClass.PRICE_CLASS_100,
            enable_logging=True,
            log_bucket=logs,
            log_file_prefix="cloudfront/",
        )
        self.url = f"https://{self.distribution.distribution_domain_name}"
        self.api_url = f"{self.url}/{API_STAGE}"
        self.deployment = s3deploy.BucketDeployment(
            self,
            "Page",
            sources=[
                s3deploy.Source.asset(str(WEB_DIR), exclude=[CONFIG_FILE]),
                s3deploy.Source.json_data(CONFIG_FILE, {"apiBaseUrl": self.api_url}),
            ],
            destination_bucket=bucket,
            distribution=self.distribution,
            distribution_paths=["/*"],
            prune=True,
            memory_limit=256,
        )
        self._suppress()

    def _suppress(self) -> None:
        """The CDN's cdk-nag suppressions, each with its reason."""
        suppress(
            self.distribution,
            "AwsSolutions-CFR1",
            "Editors and customers may be anywhere; no country is excluded.",
        )
        suppress(
            self.distribution,
            "AwsSolutions-CFR2",
            "No WAF web ACL by default (its monthly price exceeds the small deployment's CDN); "
            "the API behind /api/* is throttled by its stage and the site's usage plan.",
        )
        suppress(
            self.distribution,
            "AwsSolutions-CFR4",
            "The distribution uses the default *.cloudfront.net certificate, for which "
            "CloudFront fixes the viewer policy; TLSv1.2_2021 applies with a custom domain.",
        )
