"""`pulumi up` reads each region's Elastic IP quota from Service Quotas (botocore's Stubber stands in:
moto has no EC2 quotas) and the settings refuse a `maxCount` above it."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from splitrelay.infra.quotas import ELASTIC_IP_QUOTA_CODE, fill_elastic_ip_quotas, read_elastic_ip_quota
from splitrelay.infra.settings import InfraConfigError, parse_settings

REQUEST = {"ServiceCode": "ec2", "QuotaCode": ELASTIC_IP_QUOTA_CODE}


def quota(value: float) -> dict[str, Any]:
    return {"Quota": {"ServiceCode": "ec2", "QuotaCode": ELASTIC_IP_QUOTA_CODE, "Value": value}}


def client() -> Any:
    return boto3.client(
        "service-quotas", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
    )


def test_the_applied_quota_is_read() -> None:
    c = client()
    with Stubber(c) as stub:
        stub.add_response("get_service_quota", quota(20.0), REQUEST)
        assert read_elastic_ip_quota(c) == 20


def test_without_an_applied_quota_the_default_is_read() -> None:
    c = client()
    with Stubber(c) as stub:
        stub.add_client_error("get_service_quota", "NoSuchResourceException", expected_params=REQUEST)
        stub.add_response("get_aws_default_service_quota", quota(5.0), REQUEST)
        assert read_elastic_ip_quota(c) == 5


def test_without_permission_nothing_is_read() -> None:
    c = client()
    with Stubber(c) as stub:
        stub.add_client_error("get_service_quota", "AccessDeniedException", expected_params=REQUEST)
        assert read_elastic_ip_quota(c) is None


def raw_settings(**region: Any) -> dict[str, Any]:
    return {
        "accountId": "0123456789abcdef0123456789abcdef",
        "zoneId": "fedcba9876543210fedcba9876543210",
        "zoneName": "example.com",
        "hostname": "voice.example.com",
        "regions": [{"awsRegion": "us-east-1", "inference": "10.80.3.7:7000", **region}],
    }


def test_a_max_count_above_the_read_quota_is_refused_before_anything_is_declared() -> None:
    c = client()
    asked: list[str] = []

    def client_for(aws_region: str) -> Any:
        asked.append(aws_region)
        return c

    raw = raw_settings(minCount=1, maxCount=8)
    with Stubber(c) as stub:
        stub.add_response("get_service_quota", quota(6.0), REQUEST)
        fill_elastic_ip_quotas(raw, client_for)
    assert asked == ["us-east-1"] and raw["regions"][0]["elasticIpQuota"] == 6
    with pytest.raises(
        InfraConfigError, match=r"regions\[0\].maxCount: 8 relays need 8 Elastic IPs .* quota of 6"
    ):
        parse_settings(raw, "prod")


def test_a_quota_the_stack_gives_is_not_looked_up() -> None:
    def client_for(aws_region: str) -> Any:
        raise AssertionError(f"looked up {aws_region}")

    raw = raw_settings(maxCount=8, elasticIpQuota=10)
    fill_elastic_ip_quotas(raw, client_for)
    assert parse_settings(raw, "prod").regions[0].elastic_ip_quota == 10
