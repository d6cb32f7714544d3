"""A real S3-compatible server for tests: moto's standalone server on 127.0.0.1, path-style."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Every test run gets a fresh secret, so a test can look for it in everything that was written.
SECRET = f"atlas-test-secret-{uuid.uuid4().hex}"


@dataclass
class S3:
    endpoint: str
    bucket: str

    def client(self):
        import boto3

        return boto3.client("s3")

    def objects(self) -> dict[str, bytes]:
        """Every object in the bucket with its bytes (not the empty folder markers pyarrow leaves)."""
        client = self.client()
        keys = [
            item["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
            for item in page.get("Contents", [])
            if not item["Key"].endswith("/")
        ]
        return {key: client.get_object(Bucket=self.bucket, Key=key)["Body"].read() for key in keys}

    def make_public(self, prefix: str) -> None:
        """Let anyone GET objects under `prefix`, as a bucket that serves a site is set up."""
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "s3:GetObject",
                    "Resource": f"arn:aws:s3:::{self.bucket}/{prefix}*",
                }
            ],
        }
        self.client().put_bucket_policy(Bucket=self.bucket, Policy=json.dumps(policy))

    def http(self, key: str) -> tuple[bytes, str]:
        """GET an object over plain HTTP, as a browser would (moto serves unsigned reads)."""
        import urllib.request

        with urllib.request.urlopen(f"{self.endpoint}/{self.bucket}/{key}", timeout=30) as response:
            return response.read(), response.headers.get("Content-Type", "")


@contextmanager
def s3_server(bucket: str = "atlas") -> Iterator[S3]:
    """Start the server, point the AWS SDKs at it through the environment, make a bucket."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "atlas-test-key",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        s3 = S3(endpoint, bucket)
        s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
