"""Helper (no tests here): a real S3 endpoint for tests, moto's server over HTTP on loopback.

``s3_server(*buckets)`` starts ``moto.server.ThreadedMotoServer`` on a free port, empties moto's
store (it is per process: another test's buckets would still be there), creates the buckets
with boto3 (the real S3 protocol), yields the endpoint URL and stops the server.
``S3_ENV`` holds the credentials and region the gpuledger commands read from the environment;
``s3_fs(endpoint)`` is pyarrow's S3 file system on it.
"""

from __future__ import annotations

import urllib.request
from contextlib import contextmanager
from typing import Iterator

import pytest

from tests.agentrun import free_port

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


@contextmanager
def s3_server(*buckets: str) -> Iterator[str]:
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        # moto keeps its buckets per process, not per server: start from none
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10).close()
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()


def s3_fs(endpoint: str):
    import pyarrow.fs as pafs

    return pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", access_key="testing", secret_key="testing",
                             region="us-east-1")
