"""Optional refresh of EC2 and data-transfer prices from the AWS Pricing API into a user price file.

The defaults need no network and no credentials; this is for users who want their own region's
current list prices. boto3 is imported lazily so the rest of `splitrelay cost` never pays for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from splitrelay.cost.catalogue import (
    Price,
    PriceBook,
    check_instance_type,
    dump_prices,
    instance_price,
    load_price_file,
)
from splitrelay.cost.errors import CostInputError

if TYPE_CHECKING:
    from mypy_boto3_pricing import PricingClient
    from mypy_boto3_pricing.type_defs import FilterTypeDef

PRICING_API_REGION = "us-east-1"
"""The Pricing API is served from a few regions only; prices of every region are asked there."""
MAX_PAGES = 10
PAID_TIERS = 4
_REGION = re.compile(r"[a-z]{2}(-gov)?-[a-z]+-[0-9]")


class AwsPriceError(RuntimeError):
    """The Pricing API could not be used or answered something we cannot read; one line, no secrets."""


def pricing_client() -> PricingClient:
    """A client from a fresh session, so credentials and endpoint come from the environment now."""
    import boto3

    return boto3.session.Session().client("pricing", region_name=PRICING_API_REGION)


def fetch_prices(client: PricingClient, region: str, instance_type: str) -> list[Price]:
    """The on-demand Linux price of `instance_type` and the internet-egress tiers of `region`."""
    if not _REGION.fullmatch(region):
        raise CostInputError("--region", f"must be an AWS region code such as us-east-1, got {region!r}")
    check_instance_type(instance_type)
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        compute = _products(
            client,
            "AmazonEC2",
            {
                "instanceType": instance_type,
                "regionCode": region,
                "operatingSystem": "Linux",
                "tenancy": "Shared",
                "preInstalledSw": "NA",
                "capacitystatus": "Used",
            },
        )
        transfer = _products(
            client,
            "AWSDataTransfer",
            {"fromRegionCode": region, "toLocation": "External", "transferType": "AWS Outbound"},
        )
    except NoCredentialsError:
        raise AwsPriceError(
            "no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "(refresh-prices is optional; `splitrelay cost` needs no credentials)"
        ) from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "unknown")
        raise AwsPriceError(f"the AWS Pricing API refused the request ({code})") from None
    except BotoCoreError as exc:
        raise AwsPriceError(f"cannot use the AWS Pricing API ({type(exc).__name__})") from None
    return [_instance_price(compute, region, instance_type), *_egress_prices(transfer, region)]


def merge_price_file(path: Path, fetched: Iterable[Price], catalogue: PriceBook, header: str) -> str:
    """The text of `path` with `fetched` prices replacing or joining its entries, checked against
    the catalogue so that the file is usable with `--prices`."""
    entries = {p.key: p for p in (load_price_file(path) if path.exists() else [])}
    entries.update({p.key: p for p in fetched})
    catalogue.with_overrides(entries.values(), label=path.name)
    return dump_prices(entries.values(), header)


def _products(client: PricingClient, service: str, fields: dict[str, str]) -> list[dict[str, Any]]:
    filters: list[FilterTypeDef] = [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in fields.items()]
    items: list[dict[str, Any]] = []
    token = ""
    for _ in range(MAX_PAGES):
        if token:
            page = client.get_products(
                ServiceCode=service, Filters=filters, FormatVersion="aws_v1", MaxResults=100, NextToken=token
            )
        else:
            page = client.get_products(
                ServiceCode=service, Filters=filters, FormatVersion="aws_v1", MaxResults=100
            )
        for raw in page.get("PriceList", []):
            try:
                items.append(json.loads(raw))
            except (TypeError, json.JSONDecodeError):
                raise AwsPriceError(
                    f"the AWS Pricing API returned a {service} item that is not JSON"
                ) from None
        token = page.get("NextToken", "")
        if not token:
            return items
    raise AwsPriceError(f"more than {MAX_PAGES} pages of {service} prices: the filters match too much")


def _instance_price(products: list[dict[str, Any]], region: str, instance_type: str) -> Price:
    found = {_dimension(p, "Hrs")[0]: p for p in products}
    if not found:
        raise AwsPriceError(f"no Linux on-demand price for {instance_type} in {region}")
    if len(found) > 1:
        listed = ", ".join(f"{usd:g}" for usd in sorted(found))
        raise AwsPriceError(
            f"{instance_type} in {region} has several on-demand prices ({listed}); expected one"
        )
    usd, product = next(iter(found.items()))
    return instance_price(
        instance_type,
        usd,
        f"AWS Pricing API: AmazonEC2 sku {product['product']['sku']}",
        _published(product),
        note=f"Linux on-demand, shared tenancy, {region}",
    )


def _egress_prices(products: list[dict[str, Any]], region: str) -> list[Price]:
    egress = [
        p
        for p in products
        if p["product"]["attributes"].get("usagetype", "").endswith("DataTransfer-Out-Bytes")
    ]
    if len(egress) != 1:
        raise AwsPriceError(f"expected one internet-egress product for {region}, got {len(egress)}")
    product = egress[0]
    dims = _dimensions(product, "GB")
    # Leading $0 rows are free allowances; the account-wide 100 GB free tier stays the catalogue's.
    paid = [d for d in dims if d[0] > 0]
    if len(paid) != PAID_TIERS or paid[-1][2] != float("inf"):
        raise AwsPriceError(
            f"expected {PAID_TIERS} priced egress tiers ending in Inf for {region}, got {len(paid)}: "
            "the price list changed shape; update scripts/cost/aws_prices.py"
        )
    source = f"AWS Pricing API: AWSDataTransfer sku {product['product']['sku']}"
    published = _published(product)
    prices = []
    for i, (usd, _begin, end) in enumerate(paid, start=1):
        prices.append(
            Price(
                ("aws", "egress", f"tier{i}_per_gb"),
                usd,
                "USD/GB",
                source,
                published,
                note=region,
                origin="aws",
            )
        )
        if i < PAID_TIERS:
            prices.append(
                Price(
                    ("aws", "egress", f"tier{i}_up_to_gb"),
                    end,
                    "GB/month",
                    source,
                    published,
                    note=region,
                    origin="aws",
                )
            )
    return prices


def _dimensions(product: dict[str, Any], unit: str) -> list[tuple[float, float, float]]:
    """(USD, begin, end) of each on-demand price row in `unit`, sorted by where the row begins."""
    rows = []
    try:
        for offer in product["terms"]["OnDemand"].values():
            for dim in offer["priceDimensions"].values():
                if dim["unit"] == unit:
                    end = float("inf") if dim.get("endRange", "Inf") == "Inf" else float(dim["endRange"])
                    rows.append((float(dim["pricePerUnit"]["USD"]), float(dim.get("beginRange", 0)), end))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise AwsPriceError(
            f"unreadable on-demand terms in sku {product.get('product', {}).get('sku')}"
        ) from None
    if not rows:
        raise AwsPriceError(f"no on-demand price per {unit} in sku {product.get('product', {}).get('sku')}")
    return sorted(rows, key=lambda row: row[1])


def _dimension(product: dict[str, Any], unit: str) -> tuple[float, float, float]:
    rows = _dimensions(product, unit)
    if len(rows) != 1:
        raise AwsPriceError(
            f"expected one on-demand {unit} price in sku {product['product']['sku']}, got {len(rows)}"
        )
    return rows[0]


def _published(product: dict[str, Any]) -> date | None:
    raw = product.get("publicationDate")
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).date()
    except ValueError:
        return None
