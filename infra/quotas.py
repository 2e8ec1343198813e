"""The account's Elastic IP quota per region, read from Service Quotas where the credentials allow.

`pulumi up` fills each region's `elasticIpQuota` from it when the stack does not say, so the settings
check (`maxCount` at most the quota, infra/settings.py) uses the account's real number instead of AWS's
default of 5. Without permission (servicequotas:GetServiceQuota) or network, the default stands and the
docs say how to set it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from typing import Any, Final

ELASTIC_IP_QUOTA_CODE: Final = "L-0263D0A3"
"""Service Quotas' code for "EC2-VPC Elastic IPs"."""

log = logging.getLogger(__name__)


def read_elastic_ip_quota(client: Any) -> int | None:
    """The applied quota (or AWS's default when none was requested), None when it cannot be read."""
    from botocore.exceptions import BotoCoreError, ClientError

    for read in (client.get_service_quota, client.get_aws_default_service_quota):
        try:
            value = read(ServiceCode="ec2", QuotaCode=ELASTIC_IP_QUOTA_CODE)["Quota"]["Value"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchResourceException":
                continue  # no quota applied to this account: the default is in force
            log.info("Elastic IP quota not readable (%s): keeping the stack's value", exc)
            return None
        except (BotoCoreError, KeyError, TypeError) as exc:
            log.info("Elastic IP quota not readable (%s): keeping the stack's value", type(exc).__name__)
            return None
        return int(value)
    return None


def fill_elastic_ip_quotas(raw: MutableMapping[str, Any], client_for: Callable[[str], Any]) -> None:
    """Set `elasticIpQuota` on every region of the raw settings that does not give one and whose
    quota can be read (``client_for(aws_region)`` gives a service-quotas client)."""
    regions = raw.get("regions")
    if not isinstance(regions, list):
        return
    for region in regions:
        if not isinstance(region, dict) or "elasticIpQuota" in region:
            continue
        aws_region = region.get("awsRegion")
        if not isinstance(aws_region, str):
            continue  # parse_settings names the problem
        quota = read_elastic_ip_quota(client_for(aws_region))
        if quota is not None:
            region["elasticIpQuota"] = quota
