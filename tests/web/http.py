"""A plain HTTP client for the tests (the standard library's, off the trio thread): any method,
any headers, ``Host`` included, so each refusal can be asked for."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any

import trio


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request_sync(address: str, method: str, path: str, headers: dict[str, str] | None = None,
                 body: bytes | None = None, *, read: int | None = None, timeout: float = 10.0) -> Answer:
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        sent = {"Host": address, **(headers or {})}
        if body is not None:
            sent.setdefault("Content-Length", str(len(body)))
        for k, v in sent.items():
            if v is not None:
                conn.putheader(k, v)
        conn.endheaders(body)
        r = conn.getresponse()
        data = r.read(read) if read is not None else r.read()
        return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        conn.close()


async def request(address: str, method: str, path: str, headers: dict[str, str] | None = None,
                  body: bytes | None = None, **kw: Any) -> Answer:
    return await trio.to_thread.run_sync(lambda: request_sync(address, method, path, headers, body, **kw))


def post_json(obj: Any) -> tuple[dict[str, str], bytes]:
    return {"Content-Type": "application/json"}, json.dumps(obj).encode()
