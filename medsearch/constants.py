"""Names shared by the runtime (SageMaker jobs, Lambdas), the CDK app and the tests.

One module, imported by everyone, so a resource name or a log format cannot drift between the code
that writes it and the code that reads it (for example the training job's metric lines and the
``metric_definitions`` regexes SageMaker uses to chart them). No imports beyond the standard
library: the infra app and the Lambdas load it without the rest of the stack.
"""

from __future__ import annotations

import re
from typing import Final

PROJECT: Final = "medsearch"

# --- Entry points (source folder + module, as SageMaker and Lambda reference them) ---------------

TRAINING_SOURCE_DIR: Final = "training_job"
TRAINING_ENTRY_POINT: Final = "train.py"
BATCH_SOURCE_DIR: Final = "batch_vectorize"
BATCH_ENTRY_POINT: Final = "inference.py"
SEARCH_API_HANDLER: Final = "lambdas.search_api.handler.handler"
INDEX_LOADER_HANDLER: Final = "lambdas.index_loader.handler.handler"
PIPELINE_HANDLER: Final = "lambdas.pipeline.handler.handler"

# --- SageMaker container layout -----------------------------------------------------------------

# The training channel the job reads its manifest from (SM_CHANNEL_TRAIN).
TRAIN_CHANNEL: Final = "train"
# Managed spot training syncs this folder to S3 and restores it when a job resumes.
CHECKPOINT_DIR: Final = "/opt/ml/checkpoints"
# Inside SM_MODEL_DIR: the ONNX encoders the search API serves.
ONNX_SUBDIR: Final = "onnx"
# Inside SM_OUTPUT_DATA_DIR: the evaluation report of the trained model.
EVALUATION_REPORT: Final = "evaluation.json"
# Batch transform: one JSON line in, one JSON line out.
JSONLINES: Final = "application/jsonlines"

# --- S3 layout of one pipeline run (prefixes inside the data bucket) ----------------------------

DATA_PREFIX: Final = "data/"
MODEL_PREFIX: Final = "models/"
# The live model: {"run", "model" (its ONNX folder), "evaluation"}, written when a run is
# published; the search API serves the model it names.
LIVE_MODEL_KEY: Final = f"{MODEL_PREFIX}live.json"
VECTORS_PREFIX: Final = "vectors/"
# Batch transform writes ``<input name>.out`` next to each input; the loader reacts to these.
TRANSFORM_OUTPUT_SUFFIX: Final = ".out"

# --- Search API Lambda --------------------------------------------------------------------------

# Model artifacts (the ONNX folder) are downloaded once per container into this folder.
# /tmp is the only writable path in a Lambda, and each container has its own.
LAMBDA_MODEL_DIR: Final = "/tmp/medsearch-model"  # noqa: S108
# API Gateway ends an integration after 29 s; one API call makes at most three OpenSearch
# requests in a row (search, the score breakdown, the page's documents), so each request, its
# retries included, gets 8 s: the answer (or a clear 503) comes before the gateway's 504.
API_GATEWAY_TIMEOUT_S: Final = 29.0
SEARCH_REQUEST_BUDGET_S: Final = 8.0
# The API Lambda's zip package must stay under Lambda's unzipped limit.
LAMBDA_UNZIPPED_LIMIT_BYTES: Final = 250 * 1024 * 1024
# The Lambda runtime the packages are built for: python3.12 runs on Amazon Linux 2023 (glibc 2.34),
# so wheels up to manylinux_2_28 (the packager also accepts the older manylinux tags).
LAMBDA_RUNTIME: Final = "python3.12"
LAMBDA_PYTHON_VERSION: Final = "3.12"
LAMBDA_PLATFORM: Final = "manylinux_2_28_x86_64"
SEARCH_API_PACKAGE_DIR: Final = "build/search_api"
INDEX_LOADER_PACKAGE_DIR: Final = "build/index_loader"
PIPELINE_PACKAGE_DIR: Final = "build/pipeline"

# --- Lambda observability (Powertools reads these names from its environment) ---------------------

SEARCH_API_SERVICE: Final = f"{PROJECT}-search-api"
INDEX_LOADER_SERVICE: Final = f"{PROJECT}-index-loader"
METRICS_NAMESPACE: Final = PROJECT

# --- Deployed API -------------------------------------------------------------------------------

# The REST API's stage. The editors' site serves the API under the same path on its own origin
# (CloudFront forwards ``/api/*`` to the stage), so links the API builds from its stage prefix
# resolve the same way on both hosts.
API_STAGE: Final = "api"
# The one version of the API's paths (the app's routes, the links it builds, the CDN's cache
# behaviours); the unversioned paths of earlier releases are deprecated aliases.
API_PREFIX: Final = "/v1"
# The header API Gateway reads a client's API key from.
API_KEY_HEADER: Final = "x-api-key"

# --- Training metrics: one stable line format and the regexes that parse it ----------------------

METRIC_MARKER: Final = "[metric]"
# One metric per line, e.g. ``[metric] train:loss=0.4213 epoch=3``; the epoch part is optional.
METRIC_LINE: Final = METRIC_MARKER + " {name}={value:.6g}"
_NUMBER: Final = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"

# Every metric the training job prints; names use only [a-z0-9:@_.] so they are valid in
# SageMaker and CloudWatch.
METRIC_NAMES: Final = (
    # Per epoch, during training.
    "epoch",
    "train:loss",
    "train:learning_rate",
    "validation:text_to_image_r@1",
    "validation:text_to_image_r@10",
    "validation:image_to_text_r@10",
    # The final model on the evaluation split (test, or validation when there is no test split).
    "eval:in_batch_mrr@10",
    "eval:text_to_image_r@1",
    "eval:text_to_image_r@5",
    "eval:text_to_image_r@10",
    "eval:text_to_image_mrr@10",
    "eval:text_to_image_median_rank",
    "eval:image_to_text_r@1",
    "eval:image_to_text_r@10",
    "eval:queries_ndcg@10",
    "eval:queries_r@10",
)


def metric_regex(name: str) -> str:
    """Return the regex whose first group captures ``name``'s value in a metric line."""
    return re.escape(METRIC_MARKER) + " " + re.escape(name) + "=" + _NUMBER


# What `Estimator(metric_definitions=...)` takes.
METRIC_DEFINITIONS: Final = tuple(
    {"Name": name, "Regex": metric_regex(name)} for name in METRIC_NAMES
)


def format_metric(name: str, value: float, *, epoch: int | None = None) -> str:
    """Return one metric line in the stable format that ``METRIC_DEFINITIONS`` parses."""
    line = METRIC_LINE.format(name=name, value=float(value))
    return f"{line} epoch={epoch}" if epoch is not None else line
