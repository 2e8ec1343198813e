"""Price a stack's configuration with `splitrelay cost`: the same fleet, the same stable-address choice.

`splitrelay cost from-stack infra/Pulumi.<stack>.yaml` (scripts/cli/cost.py) prints the command.

The cost model (scripts/cost/custom.py `Fleet`) describes one uniform fleet; a stack may mix instance
types and counts per region, so the mapping takes the most expensive reading (largest minimum, the
first region's type) and says what it rounded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from splitrelay.infra.settings import InfraConfigError, StackSettings, parse_settings
from splitrelay.infra.settings import vcpus as vcpus  # where it lived: tests and callers import it here

CONFIG_NAMESPACE = "splitrelay"


def accelerator_count(settings: StackSettings) -> int:
    """Global Accelerators the stack creates: one per relay slot, or none with Elastic IPs."""
    return settings.slot_count if settings.stable_address == "global-accelerator" else 0


def cost_arguments(settings: StackSettings) -> tuple[list[str], list[str]]:
    """(`splitrelay cost` arguments, notes on what was rounded to fit the uniform cost model)."""
    notes: list[str] = []
    regions = settings.regions
    types = {r.instance_type for r in regions}
    minimum = max(max(r.min_count for r in regions), 1)
    if len(types) > 1:
        notes.append(
            f"regions use {', '.join(sorted(types))}: priced as {regions[0].instance_type} everywhere"
        )
    if len({r.min_count for r in regions}) > 1 or regions[0].min_count == 0:
        notes.append(f"minCount differs or is 0: priced at {minimum} per region")
    args = [
        "--regions",
        str(len(regions)),
        "--min-instances",
        str(minimum),
        "--instance-type",
        regions[0].instance_type,
        "--accelerators",
        str(accelerator_count(settings)),
    ]
    cores = vcpus(regions[0].instance_type)
    if cores is None:
        notes.append(f"vCPUs of {regions[0].instance_type} unknown: pass --cores-per-instance yourself")
    else:
        args += ["--cores-per-instance", str(cores)]
    if settings.stable_address == "elastic-ip":
        notes.append(
            f"{settings.slot_count} Elastic IPs (public IPv4, billed hourly by AWS) are not in the cost model"
        )
    return args, notes


def settings_from_stack_file(path: Path) -> StackSettings:
    """Read Pulumi.<stack>.yaml (plain values only; no secret is needed for pricing)."""
    import yaml

    try:
        document: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InfraConfigError("(file)", f"cannot read {path}: {exc}") from None
    config = document.get("config") if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise InfraConfigError("(file)", f"{path} has no config: section")
    prefix = f"{CONFIG_NAMESPACE}:"
    raw = {k[len(prefix) :]: v for k, v in config.items() if isinstance(k, str) and k.startswith(prefix)}
    stack = path.name.removeprefix("Pulumi.").removesuffix(".yaml")
    return parse_settings(raw, stack)
