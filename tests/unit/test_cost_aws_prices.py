"""`refresh-prices aws` against botocore's Stubber with fixed Pricing API answers; no AWS call is made.

The no-credentials case uses a real botocore client with every credential source emptied and its
endpoint pointed at 127.0.0.1, so even a misconfiguration could not leave the machine.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.stub import Stubber
from typer.testing import CliRunner

from splitrelay.cli.cost import cost_app
from splitrelay.cost import aws_prices
from splitrelay.cost.aws_prices import AwsPriceError, fetch_prices, merge_price_file
from splitrelay.cost.catalogue import load_catalogue, load_price_file
from splitrelay.cost.errors import CostInputError

if TYPE_CHECKING:
    from mypy_boto3_pricing import PricingClient

FIXTURE = Path(__file__).parent / "data" / "aws_pricing_ap_southeast_2.json"


def fixture_calls() -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = json.loads(FIXTURE.read_text())["calls"]
    return calls


def offline_client() -> PricingClient:
    # Placeholder keys: the Stubber answers before any request is signed or sent.
    session = boto3.session.Session(aws_access_key_id="placeholder", aws_secret_access_key="placeholder")
    return session.client("pricing", region_name="us-east-1")


@pytest.fixture
def stubbed() -> Iterator[tuple[PricingClient, Stubber]]:
    client = offline_client()
    stubber = Stubber(client)
    for call in fixture_calls():
        stubber.add_response("get_products", call["response"], call["expected_params"])
    with stubber:
        yield client, stubber
    stubber.assert_no_pending_responses()


def test_fetch_reads_instance_price_and_egress_tiers(stubbed: tuple[PricingClient, Stubber]) -> None:
    client, _ = stubbed
    prices = {p.key: p for p in fetch_prices(client, "ap-southeast-2", "m7g.large")}
    instance = prices["aws.ec2.instance_hour.m7g.large"]
    assert (instance.value, instance.unit) == (0.103, "USD/hour")  # on-demand, not the reserved $0.065
    assert instance.source == "AWS Pricing API: AmazonEC2 sku Q7RUHX4M2EXAMPLE"
    assert str(instance.as_of) == "2026-11-20"
    assert [prices[f"aws.egress.tier{i}_per_gb"].value for i in (1, 2, 3, 4)] == [0.114, 0.098, 0.094, 0.092]
    assert [prices[f"aws.egress.tier{i}_up_to_gb"].value for i in (1, 2, 3)] == [10240, 51200, 153600]
    assert "aws.egress.tier4_up_to_gb" not in prices
    assert len(prices) == 8


def test_refresh_writes_a_price_file_the_report_uses(
    stubbed: tuple[PricingClient, Stubber], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = stubbed
    monkeypatch.setattr(aws_prices, "pricing_client", lambda: client)
    out = tmp_path / "sydney.toml"
    out.write_text('[livekit.plans.ship.month]\nvalue = 0.0\nunit = "USD/month"\n')  # kept by the merge
    runner = CliRunner()
    result = runner.invoke(
        cost_app, ["refresh-prices", "aws", "--region", "ap-southeast-2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 8 prices for ap-southeast-2" in result.stdout
    written = {p.key: p for p in load_price_file(out)}
    assert written["livekit.plans.ship.month"].value == 0
    assert written["aws.egress.tier1_per_gb"].value == 0.114

    report = runner.invoke(cost_app, ["--prices", str(out), "--json"])
    assert report.exit_code == 0, report.output
    data = json.loads(report.stdout)
    assert data["prices"]["aws.ec2.instance_hour.m7g.large"]["value"] == 0.103
    assert data["prices"]["aws.ec2.instance_hour.m7g.large"]["origin"] == "file sydney.toml"
    custom = next(o for o in data["at_volume"]["options"] if o["name"] == "custom")
    fleet = next(i for i in custom["line_items"] if i["label"] == "Relay fleet")
    assert fleet["usd"] == pytest.approx(4 * 730 * 0.103)
    egress = next(i for i in custom["line_items"] if i["label"] == "AWS data transfer out")
    assert egress["usd"] == pytest.approx(290 * 0.114)


def test_api_refusal_is_one_line_without_details(tmp_path: Path) -> None:
    client = offline_client()
    with Stubber(client) as stubber:
        stubber.add_client_error(
            "get_products", service_error_code="AccessDeniedException", http_status_code=400
        )
        with pytest.raises(
            AwsPriceError, match=r"^the AWS Pricing API refused the request \(AccessDeniedException\)$"
        ):
            fetch_prices(client, "us-east-1", "m7g.large")


def test_changed_price_list_shape_is_refused() -> None:
    calls = copy.deepcopy(fixture_calls())
    product = json.loads(calls[2]["response"]["PriceList"][0])
    dims = next(iter(product["terms"]["OnDemand"].values()))["priceDimensions"]
    dims.pop(next(k for k, d in dims.items() if d["endRange"] == "Inf"))
    calls[2]["response"]["PriceList"] = [json.dumps(product)]
    client = offline_client()
    with Stubber(client) as stubber:
        for call in calls:
            stubber.add_response("get_products", call["response"], call["expected_params"])
        with pytest.raises(AwsPriceError, match="expected 4 priced egress tiers ending in Inf"):
            fetch_prices(client, "ap-southeast-2", "m7g.large")


@pytest.mark.parametrize(
    ("region", "instance_type", "field"),
    [("Sydney", "m7g.large", "--region"), ("us-east-1", "M7G LARGE", "--instance-type")],
)
def test_bad_arguments_fail_before_any_call(region: str, instance_type: str, field: str) -> None:
    client = offline_client()
    with Stubber(client), pytest.raises(CostInputError) as caught:  # no response queued: a call would fail
        fetch_prices(client, region, instance_type)
    assert caught.value.field == field


def test_merge_refuses_a_file_the_catalogue_would_refuse(tmp_path: Path) -> None:
    out = tmp_path / "p.toml"
    out.write_text('[livekit.plans.ship.month]\nvalue = 1\nunit = "EUR/month"\n')
    with pytest.raises(CostInputError, match="must be 'USD/month'"):
        merge_price_file(out, [], load_catalogue(), "header")


def test_without_credentials_one_clear_line_and_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", "http://127.0.0.1:9")
    out = tmp_path / "prices.toml"
    result = CliRunner().invoke(
        cost_app, ["refresh-prices", "aws", "--region", "us-east-1", "--out", str(out)]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: no AWS credentials found")
    assert result.stderr.count("\n") == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []
