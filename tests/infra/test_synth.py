"""The app as ``cdk synth`` runs it: its entry point, cdk-nag's AwsSolutions pack, cfn-lint.

``infra/app.py`` runs in a subprocess the way the CDK CLI starts it (``CDK_OUTDIR``,
``CDK_CONTEXT_JSON``), with no AWS credentials and no network, so these tests cover what
``make synth`` and ``cdk deploy`` do before they reach AWS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_s3 as s3
from cdk_nag import AwsSolutionsChecks

from infra.config import load_config
from infra.stack import MedsearchStack
from tests.support.cdk_app import app_context

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "infra" / "app.py"
# An explanation must say why, not just restate the rule.
MIN_REASON_CHARS = 40


def run_app(outdir: Path, context: dict[str, Any] | None = None) -> subprocess.CompletedProcess:
    """Run the app's entry point as the CDK CLI does, without any AWS credentials."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("AWS_") and key != "CDK_CONTEXT_JSON"
    }
    env.update(
        CDK_OUTDIR=str(outdir),
        JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20",
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_CONFIG_FILE=os.devnull,
    )
    # As the CLI does: cdk.json's context, then the -c values.
    env["CDK_CONTEXT_JSON"] = json.dumps({**app_context(), **(context or {})})
    return subprocess.run(
        [sys.executable, str(APP)],
        cwd=APP.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def assembly(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cloud assembly of a default synth."""
    outdir = tmp_path_factory.mktemp("cdk.out")
    result = run_app(outdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return outdir


def test_the_app_synthesizes_without_an_account_and_cdk_nag_passes(assembly: Path) -> None:
    template = json.loads((assembly / "medsearch.template.json").read_text())
    assert "AWS::OpenSearchService::Domain" in {r["Type"] for r in template["Resources"].values()}
    report = json.loads((assembly / "validation-report.json").read_text())
    plugins = {p["pluginName"]: p for p in report["pluginReports"]}
    nag = plugins["AwsSolutions"]
    assert nag["conclusion"] == "success" and not nag.get("violations")
    # Every finding that was let through was acknowledged next to its resource, with a reason.
    suppressed = nag["suppressedViolations"]
    assert suppressed
    for finding in suppressed:
        assert len(finding["reason"]) >= MIN_REASON_CHARS, finding["acknowledgedId"]


def test_cfn_lint_reports_no_errors(assembly: Path) -> None:
    template = assembly / "medsearch.template.json"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), "--format", "parseable", str(template)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # cfn-lint's exit status is a bit mask: 2 = errors, 4 = warnings, 8 = informational.
    errors = [line for line in result.stdout.splitlines() if ":E" in line]
    assert not result.returncode & 2 and not errors, result.stdout


def test_cdk_nag_stops_a_synth_on_a_finding_nobody_acknowledged(tmp_path: Path) -> None:
    app = cdk.App(outdir=str(tmp_path), context=app_context())
    stack = MedsearchStack(app, "medsearch", config=load_config({}))
    # A bucket without encryption policy, logging or TLS-only access: nag must refuse it.
    s3.Bucket(stack, "Careless")
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    report = json.loads((tmp_path / "validation-report.json").read_text())
    failed = {
        v["ruleName"]
        for p in report["pluginReports"]
        for v in p.get("violations", [])
        if any("Careless" in c["constructPath"] for c in v["violatingConstructs"])
    }
    assert {"AwsSolutions-S1", "AwsSolutions-S10"} <= failed


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"domainZones": "2"}, "domainInstanceCount 1 must be a multiple of domainZones 2"),
        ({"domainInstanceTyp": "r7g.large.search"}, "unknown context domainInstanceTyp"),
        ({"domainStandby": "true"}, "needs domainZones 3 and domainMasterType"),
        ({"domainVolumeGiB": "five"}, "domainVolumeGiB"),
    ],
)
def test_a_bad_option_ends_the_synth_with_one_line(
    tmp_path: Path, context: dict[str, str], message: str
) -> None:
    result = run_app(tmp_path, context)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medsearch infra: ")
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "medsearch.template.json").exists()
