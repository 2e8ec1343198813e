"""The relay as shipped to instances: this checkout's own wheel plus every locked dependency, one tarball.

`pulumi up` builds it (or takes one the user built) and puts it in a private S3 object; the instance
checks its sha256 against the value in the user data and installs with `pip --no-index` from the
tarball alone. So no boot step resolves a public package name: nobody who registers `splitrelay` (or
a dependency's name) on a public index can get code onto a relay.

The tarball is reproducible, byte for byte, from the same checkout and lock (SOURCE_DATE_EPOCH for the
wheel, sorted members with fixed metadata for the tar and gzip): an unchanged relay means an unchanged
hash, user data and launch template, so a second `pulumi up` replaces no instance.

Layout inside:
    wheels/*.whl       the splitrelay wheel and every dependency for the target platform
    bundle.json        {"format": 1, "requirement": "splitrelay[relay]==X", "python": "3.12",
                        "arch": "arm64", "wheels": {name: sha256}}
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

FORMAT: Final = 1
REQUIREMENT_EXTRA: Final = "relay"
SOURCE_DATE_EPOCH: Final = "315532800"  # 1980-01-01, the earliest date a zip can hold
ARCHES: Final = {"amd64": "x86_64", "arm64": "aarch64"}
DEFAULT_GLIBC: Final = "2.39"
"""Ubuntu 24.04's glibc: wheels tagged manylinux_2_17 .. manylinux_2_39 run on it."""
PIP_TIMEOUT_S: Final = 900


class BundleError(Exception):
    """The bundle could not be built or read; the message names the step and the cause."""


@dataclass(frozen=True)
class RelayBundle:
    path: Path
    sha256: str
    arch: str
    python: str
    requirement: str

    @property
    def object_key(self) -> str:
        """The S3 key: content-addressed, so a new relay is a new object and none is overwritten."""
        return f"relay/splitrelay-{self.arch}-py{self.python}-{self.sha256[:16]}.tar.gz"


def platform_tags(arch: str, glibc: str = DEFAULT_GLIBC) -> list[str]:
    """pip's --platform values for a Linux instance of this architecture and glibc."""
    try:
        machine = ARCHES[arch]
    except KeyError:
        raise BundleError(f"architecture must be one of {sorted(ARCHES)}, got {arch!r}") from None
    major, _, minor = glibc.partition(".")
    if major != "2" or not minor.isdigit() or not 17 <= int(minor) <= 99:
        raise BundleError(f"glibc must be 2.17 or later, e.g. 2.39, got {glibc!r}")
    return [f"manylinux_2_{m}_{machine}" for m in range(17, int(minor) + 1)] + [f"manylinux2014_{machine}"]


def project_version(repo: Path) -> str:
    """The version in pyproject.toml (the requirement pins it, so pip takes this wheel and no other)."""
    import tomllib

    with open(repo / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def _run(step: str, command: Sequence[str], env: dict[str, str] | None = None) -> None:
    try:
        done = subprocess.run(
            list(command), capture_output=True, text=True, timeout=PIP_TIMEOUT_S, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BundleError(f"{step}: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise BundleError(f"{step} failed (exit {done.returncode}): " + " | ".join(tail))


def _constraints(lock: Path, out: Path) -> Path:
    """requirements.lock as pip constraints: the instance gets exactly the versions CI tested."""
    lines = [line for line in lock.read_text().splitlines() if line and not line.startswith("#")]
    out.write_text("\n".join(lines) + "\n")
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_tarball(staging: Path, out: Path) -> None:
    """A reproducible .tar.gz of ``staging``: sorted members, zero times and owners, gzip mtime 0."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(staging.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(staging)))
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_file():
                with open(path, "rb") as member:
                    tar.addfile(info, member)
            else:
                tar.addfile(info)
    with open(out, "wb") as sink, gzip.GzipFile(fileobj=sink, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())


def build_bundle(
    repo: Path,
    out_dir: Path,
    *,
    arch: str,
    python: str,
    glibc: str = DEFAULT_GLIBC,
    pip: Sequence[str] = (sys.executable, "-m", "pip"),
) -> RelayBundle:
    """Build (or reuse, when the same inputs built it before) the bundle for one platform."""
    tags = platform_tags(arch, glibc)
    version = project_version(repo)
    requirement = f"splitrelay[{REQUIREMENT_EXTRA}]=={version}"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="splitrelay-bundle-") as tmp:
        staging = Path(tmp) / "bundle"
        wheels = staging / "wheels"
        wheels.mkdir(parents=True)
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        own = Path(tmp) / "own"
        _run(
            "building the splitrelay wheel",
            [*pip, "wheel", "--no-deps", "-q", "-w", str(own), str(repo)],
            env,
        )
        built = sorted(own.glob("splitrelay-*.whl"))
        if len(built) != 1:
            raise BundleError(f"building the splitrelay wheel: expected one wheel, found {len(built)}")
        shutil.copy2(built[0], wheels / built[0].name)
        lock = repo / "requirements.lock"
        inputs = f"{FORMAT}|{arch}|{python}|{glibc}|{_sha256(built[0])}|{_sha256(lock)}"
        cache = out_dir / f"inputs-{hashlib.sha256(inputs.encode()).hexdigest()[:24]}.json"
        cached = _cached(cache)
        if cached is not None:
            return cached
        constraints = _constraints(lock, Path(tmp) / "constraints.txt")
        platform_args = [arg for tag in tags for arg in ("--platform", tag)]
        _run(
            f"downloading the relay's dependencies for {arch} / Python {python}",
            [
                *pip,
                "download",
                "-q",
                "--only-binary=:all:",
                "--implementation",
                "cp",
                "--python-version",
                python,
                *platform_args,
                "-c",
                str(constraints),
                "--find-links",
                str(wheels),
                "-d",
                str(wheels),
                requirement,
            ],
            env,
        )
        manifest = {
            "format": FORMAT,
            "requirement": requirement,
            "python": python,
            "arch": arch,
            "wheels": {p.name: _sha256(p) for p in sorted(wheels.glob("*.whl"))},
        }
        (staging / "bundle.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        tarball = Path(tmp) / "bundle.tar.gz"
        write_tarball(staging, tarball)
        sha = _sha256(tarball)
        final = out_dir / Path(RelayBundle(out_dir, sha, arch, python, requirement).object_key).name
        shutil.move(str(tarball), final)
    cache.write_text(json.dumps({"path": final.name, "sha256": sha}))
    return RelayBundle(final, sha, arch, python, requirement)


def _cached(cache: Path) -> RelayBundle | None:
    """The bundle built before from the same wheel, lock and platform, if it is still there intact."""
    try:
        entry = json.loads(cache.read_text())
        bundle = read_bundle(cache.parent / str(entry["path"]))
    except (OSError, ValueError, KeyError, TypeError, BundleError):
        return None
    return bundle if bundle.sha256 == entry.get("sha256") else None


def read_bundle(path: Path) -> RelayBundle:
    """A bundle the user built: its manifest says the platform, its bytes give the hash."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = tar.extractfile("bundle.json")
            if member is None:
                raise BundleError(f"{path}: bundle.json is not a file")
            manifest = json.loads(member.read())
    except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
        raise BundleError(f"{path}: not a relay bundle ({type(exc).__name__}: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: bundle.json format must be {FORMAT}")
    try:
        arch, python, requirement = (str(manifest[k]) for k in ("arch", "python", "requirement"))
    except KeyError as exc:
        raise BundleError(f"{path}: bundle.json has no {exc.args[0]!r}") from None
    platform_tags(arch)
    return RelayBundle(path, _sha256(path), arch, python, requirement)
