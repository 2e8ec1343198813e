"""Fixtures of the deploy tier: one relay bundle for this machine and one set of AWS stand-ins a session."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from splitrelay.infra.bundle import RelayBundle, build_bundle
from splitrelay.relay.aws_bootstrap import SECRET_ENV_BY_PARAM, parameter_prefix
from tests.deploy.boot_support import (
    BUCKET,
    REGION,
    REPO,
    STACK,
    Imds,
    RecordingProxy,
    free_port,
    serve,
    system_python,
)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> RelayBundle:
    python, glibc = system_python()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}[os.uname().machine]
    return build_bundle(REPO, tmp_path_factory.mktemp("bundles"), arch=arch, python=python, glibc=glibc)


@pytest.fixture(scope="session")
def aws(bundle: RelayBundle) -> Iterator[dict[str, str]]:
    """moto's server with the stack's bucket, bundle object and SSM secrets; IMDS; the S3 proxy."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    session = boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION
    )
    s3 = session.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(bundle.path), BUCKET, bundle.object_key)
    ssm = session.client("ssm", endpoint_url=endpoint)
    for leaf in SECRET_ENV_BY_PARAM:
        ssm.put_parameter(
            Name=f"{parameter_prefix(STACK)}/{leaf}", Value=secrets.token_hex(32), Type="SecureString"
        )
    imds = serve(Imds)
    RecordingProxy.upstream = endpoint
    proxy = serve(RecordingProxy)
    try:
        yield {
            "endpoint": endpoint,
            "imds": f"http://127.0.0.1:{imds.server_address[1]}",
            "proxy": f"http://127.0.0.1:{proxy.server_address[1]}",
        }
    finally:
        proxy.shutdown()
        imds.shutdown()
        moto.stop()
