"""Deployment options from CDK context: defaults, ``-c`` strings, and layouts refused up front."""

from __future__ import annotations

import pytest

from infra.config import ConfigError, load_config
from tests.support.cdk_app import LARGE


def test_defaults_are_the_small_layout() -> None:
    config = load_config({})
    assert (config.domain_instance_type, config.domain_instance_count) == ("t3.medium.search", 1)
    assert config.dedicated_masters == 0 and config.domain_zones == 1
    assert (config.index_replicas, config.awareness_zones) == (0, 1)


def test_cli_strings_become_typed_options() -> None:
    config = load_config(LARGE)
    assert config.domain_instance_count == 3 and config.domain_standby is True
    assert config.api_clients == ("acme", "globex")
    assert config.admin_role_arns == ("arn:aws:iam::123456789012:role/ops",)
    # Multi-AZ with standby: three copies of every shard, spread over the three zones.
    assert (config.index_replicas, config.awareness_zones, config.dedicated_masters) == (2, 3, 3)


def test_tmp_holds_a_float32_model_only_without_snapstart() -> None:
    assert load_config({}).search_tmp_mib == 512
    assert load_config({"modelPrefix": "m/onnx", "onnxInt8": "true"}).search_tmp_mib == 512
    fp32 = load_config({"modelPrefix": "m/onnx", "snapStart": "false", "onnxInt8": "false"})
    assert fp32.search_tmp_mib == 2048


def test_replicas_follow_zone_awareness_without_standby() -> None:
    config = load_config({"domainInstanceCount": "4", "domainZones": "2"})
    assert config.index_replicas == 1 and config.awareness_zones == 1


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({**LARGE, "indexReplicas": "1"}, "multiple of 3 copies"),
        ({"indexReplicas": "1"}, "needs at least 2 data nodes"),
        ({**LARGE, "domainInstanceType": "t3.medium.search"}, "does not support T2/T3"),
        ({**LARGE, "domainMasterCount": "4"}, "domainMasterCount must be 3 or 5"),
        ({"domainName": "Medsearch"}, "domainName 'Medsearch'"),
        ({"modelPrefix": "s3://b/m", "onnxInt8": "true"}, "key prefix in the artifacts bucket"),
        ({"loaderConcurrency": "1"}, "loaderConcurrency"),
        ({"domainZones": "4"}, "domainZones"),
        ({"onnxInt8": "false"}, "SnapStart allows at most 512 MB of /tmp"),
    ],
)
def test_layouts_the_service_would_refuse_are_refused_at_synth(
    context: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match="invalid context") as error:
        load_config(context)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_the_readme_documents_every_context_key() -> None:
    from pathlib import Path

    from infra.config import DeployConfig

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Deploy to AWS") :]
    missing = [
        field.alias
        for field in DeployConfig.model_fields.values()
        if field.alias and f"`{field.alias}`" not in section
    ]
    assert missing == []
