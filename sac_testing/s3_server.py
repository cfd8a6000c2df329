"""A real S3-compatible HTTP server for tests and benches: moto in server mode, in a subprocess.

It speaks the S3 REST protocol over HTTP (SigV4 auth, presigned URLs), so
``S3Store`` and the sandboxes' presigned downloads go over the wire exactly as
they would against MinIO or AWS."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from jupyter_sac.stack import free_port

from .stack import http_status, poll_until, stop_process


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def store_config(self, bucket: str, prefix: str = "") -> dict[str, object]:
        """Traits for ``S3Store`` pointing at this server."""
        return {
            "endpoint_url": self.url,
            "bucket": bucket,
            "prefix": prefix,
            "region": self.region,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "addressing_style": "path",
            "create_bucket": True,
        }


@contextmanager
def s3_server(log_path: Path | None = None) -> Iterator[S3Endpoint]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # moto accepts any key pair; random ones let tests check a secret never leaks.
    endpoint = S3Endpoint(url, "AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))
    env = dict(os.environ, AWS_DEFAULT_REGION=endpoint.region)
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(log_path, "wb")) if log_path else subprocess.DEVNULL
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        stack.callback(stop_process, proc, 10)
        poll_until(
            lambda: proc.poll() is not None or http_status(url + "/moto-api/") == 200,
            timeout=60, what="moto S3 server",
        )  # fmt: skip
        if proc.poll() is not None:
            raise RuntimeError(f"moto S3 server exited with {proc.returncode}")
        yield endpoint
