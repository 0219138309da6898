"""An S3 API server for tests: moto's server mode (PyPI's ``moto[server]``), which speaks the S3
protocol over HTTP, on 127.0.0.1 or a lab host's address; and in front of it a pass-through
that can be told to refuse writes as a store does when a bucket is full or read-only (403
AccessDenied to every PUT and POST), to show what a fleet does then."""

from __future__ import annotations

import http.client
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from synfleet.system import free_port

ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
)


class S3Store:
    """``with S3Store("media") as store:`` an S3 server with bucket ``media``; clients use
    ``store.endpoint`` (the pass-through), :meth:`client` reads the bucket directly."""

    def __init__(self, bucket: str, address: str = "127.0.0.1") -> None:
        self.bucket = bucket
        self.address = address
        self.refuse_writes = False
        self.refused = 0
        self._moto = ThreadedMotoServer(ip_address=address, port=free_port(), verbose=False)
        self._front = ThreadingHTTPServer((address, 0), self._handler())

    @property
    def moto_endpoint(self) -> str:
        return f"http://{self.address}:{self._moto._port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.address}:{self._front.server_address[1]}"

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.moto_endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    def keys(self) -> dict[str, int]:
        """Every object of the bucket: key -> size."""
        found = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            found.update({item["Key"]: item["Size"] for item in page.get("Contents", [])})
        return found

    def object(self, key: str) -> bytes:
        return bytes(self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def __enter__(self) -> S3Store:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
        self._moto.start()
        threading.Thread(target=self._front.serve_forever, daemon=True).start()
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._front.shutdown()
        self._front.server_close()
        self._moto.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        store = self

        class Forward(BaseHTTPRequestHandler):
            # HTTP/1.1: answers "Expect: 100-continue" (boto3 asks it before an object's body).
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if store.refuse_writes and self.command in ("PUT", "POST"):
                    store.refused += 1
                    self._answer(403, {"Content-Type": "application/xml"}, ACCESS_DENIED)
                    return
                upstream = http.client.HTTPConnection(store.address, store._moto._port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    payload = answer.read()
                    forwarded = {
                        k: v for k, v in answer.getheaders() if k.lower() not in ("connection", "transfer-encoding")
                    }
                    self._answer(answer.status, forwarded, payload)
                finally:
                    upstream.close()

            def _answer(self, status: int, headers: dict[str, str], payload: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                length = headers.get("Content-Length", "0") if self.command == "HEAD" else str(len(payload))
                self.send_header("Content-Length", length)
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Forward
