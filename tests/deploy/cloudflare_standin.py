"""A local stand-in for the Cloudflare API, just enough for the real `wrangler deploy` to finish, that
records every request (CLOUDFLARE_API_BASE_URL points wrangler at it).

It answers the calls wrangler 4 makes for a Worker with static assets, in order: the service lookup
(404 code 10090 on a first deploy, the service with its script on an update), the deployments, the
account's script list (which carries each script's ``migration_tag``: wrangler sends only later
migration steps, with ``old_tag``), the asset upload session (no bucket to upload: every asset
"already known"), the script settings, the multipart script upload (a first deploy PUTs the script; an
update POSTs a version, then a deployment, then PATCHes script-settings), and the workers.dev subdomain.
"""

from __future__ import annotations

import email.parser
import email.policy
import http.server
import json
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    content_type: str
    body: bytes


@dataclass
class Upload:
    """The script upload: its metadata part and every module part (name -> (content type, bytes))."""

    metadata: dict[str, Any]
    modules: dict[str, tuple[str, bytes]] = field(default_factory=dict)


def parse_upload(request: Recorded) -> Upload:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {request.content_type}\r\n\r\n".encode() + request.body
    )
    metadata: dict[str, Any] | None = None
    modules: dict[str, tuple[str, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(name, str) and isinstance(payload, bytes)
        if name == "metadata":
            metadata = json.loads(payload)
        else:
            modules[name] = (part.get_content_type(), payload)
    assert metadata is not None, "the upload has no metadata part"
    return Upload(metadata, modules)


class CloudflareStandIn:
    """``with CloudflareStandIn(deployed_tag=None) as api:`` then run wrangler with ``api.base_url``."""

    def __init__(self, script: str, deployed_tag: str | None = None) -> None:
        self.script = script
        self.deployed_tag = deployed_tag
        self.requests: list[Recorded] = []
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                standin.requests.append(
                    Recorded(self.command, self.path, self.headers.get("content-type") or "", body)
                )
                status, result = standin.answer(self.command, self.path.split("?", 1)[0])
                errors = (
                    []
                    if status < 400
                    else [{"code": 10090, "message": "workers.api.error.service_not_found"}]
                )
                data = json.dumps(
                    {"success": status < 400, "errors": errors, "messages": [], "result": result}
                ).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/client/v4"

    def answer(self, method: str, path: str) -> tuple[int, Any]:
        script = f"/workers/scripts/{self.script}"
        if path.endswith(f"/workers/services/{self.script}"):
            if self.deployed_tag is None:
                return 404, None
            return 200, {
                "id": self.script,
                "default_environment": {
                    "environment": "production",
                    "script": {"id": self.script, "migration_tag": self.deployed_tag},
                },
            }
        if path.endswith(f"{script}/deployments"):
            return 200, {"deployments": []}
        if path.endswith("/workers/scripts"):
            listed = (
                [] if self.deployed_tag is None else [{"id": self.script, "migration_tag": self.deployed_tag}]
            )
            return 200, listed
        if path.endswith(f"{script}/assets-upload-session"):
            return 200, {"jwt": "completion-jwt", "buckets": []}
        if path.endswith(f"{script}/settings"):
            return 200, {"logpush": False, "tail_consumers": []}
        if path.endswith(script) and method == "PUT":
            return 200, {
                "id": self.script,
                "etag": "etag",
                "deployment_id": "deployment",
                "startup_time_ms": 1,
            }
        if path.endswith(f"{script}/versions") and method == "POST":  # an update: versions, then a deployment
            return 200, {
                "id": "version-2",
                "number": 2,
                "resources": {"script": {"etag": "etag"}},
                "startup_time_ms": 1,
            }
        if path.endswith(f"{script}/deployments") and method == "POST":
            return 200, {
                "id": "deployment-2",
                "strategy": "percentage",
                "versions": [{"version_id": "version-2", "percentage": 100}],
            }
        if path.endswith(f"{script}/subdomain"):
            return 200, {"enabled": False, "previews_enabled": False}
        return 200, {}

    def upload(self) -> Upload:
        """The one script upload: PUT of the script (first deploy) or POST of a version (an update)."""
        script = f"/workers/scripts/{self.script}"
        (sent,) = [
            r
            for r in self.requests
            if script in r.path
            and (r.method, r.path.split("?", 1)[0].split(script, 1)[-1])
            in (("PUT", ""), ("POST", "/versions"))
        ]
        return parse_upload(sent)

    def __enter__(self) -> CloudflareStandIn:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
