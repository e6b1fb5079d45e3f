"""A Hugging Face Hub-style file server on 127.0.0.1 for tests (``HF_ENDPOINT=server.url``).

Serves what ``huggingface_hub``'s ``HfApi.model_info`` and ``hf_hub_download`` call:

- ``GET /api/models/{owner}/{name}[/revision/{rev}]`` -> ``{"id", "sha", "siblings": [{"rfilename",
  "size", "blobId", "lfs": {"sha256", "size", "pointerSize"}}]}`` (LFS record for binary files);
- ``HEAD|GET /{owner}/{name}/resolve/{rev}/{file}`` with ``X-Repo-Commit``, ``ETag`` (the git
  blob id, or for LFS files ``X-Linked-Etag`` = sha256 and ``X-Linked-Size``), ``Content-Length``,
  ``Accept-Ranges`` and ``Range`` -> 206 ``Content-Range``; unknown repo / revision / file -> 404
  with the ``X-Error-Code`` header the client maps to its exceptions.

Test knobs: ``cut_once[file] = n`` sends the headers of the full file, ``n`` bytes, then drops
the connection once; ``corrupt[file] = data`` serves other bytes than the listed checksum;
``requests`` counts every request. The server binds 127.0.0.1 only, and stops by itself after
``lifetime`` seconds if a test forgets to.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

_LFS_SUFFIXES = (".bin", ".safetensors", ".ckpt", ".pt")


@dataclass
class Repo:
    """One synthetic repository at one commit."""

    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    revisions: tuple[str, ...] = ("main",)


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git object id


@dataclass
class HFServer:
    """``with HFServer({"owner/name": Repo(...)}) as srv: ...``; ``srv.url`` is the endpoint."""

    repos: dict[str, Repo]
    lifetime: float = 120.0
    cut_once: dict[str, int] = field(default_factory=dict)
    corrupt: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def __enter__(self) -> HFServer:
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                self._serve(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._serve(body=True)

            def _send(self, code: int, headers: dict[str, str], data: bytes = b"", body: bool = True) -> None:
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", headers.get("Content-Length", str(len(data))))
                self.end_headers()
                if body and data:
                    self.wfile.write(data)

            def _error(self, code: int, err: str, body: bool) -> None:
                msg = json.dumps({"error": err}).encode()
                self._send(code, {"X-Error-Code": err, "X-Error-Message": err, "Content-Type": "application/json"},
                           msg, body)

            def _serve(self, body: bool) -> None:
                rng = self.headers.get("Range")
                srv.requests.append(f"{self.command} {self.path}" + (f" {rng}" if rng else ""))
                path = unquote(urlparse(self.path).path).strip("/").split("/")
                if path[:2] == ["api", "models"] and len(path) >= 4:
                    return self._info(path[2:], body)
                if len(path) >= 5 and path[2] == "resolve":
                    return self._file("/".join(path[:2]), path[3], "/".join(path[4:]), body)
                self._error(404, "EntryNotFound", body)

            def _info(self, p: list[str], body: bool) -> None:
                repo_id = "/".join(p[:2])
                repo = srv.repos.get(repo_id)
                if repo is None:
                    return self._error(404, "RepoNotFound", body)
                if len(p) >= 4 and p[2] == "revision" and p[3] not in (*repo.revisions, repo.commit):
                    return self._error(404, "RevisionNotFound", body)
                sib = []
                for name, data in sorted(repo.files.items()):
                    rec = {"rfilename": name, "size": len(data), "blobId": _blob_id(data)}
                    if name.endswith(_LFS_SUFFIXES):
                        rec["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                    sib.append(rec)
                out = json.dumps({"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
                                  "siblings": sib}).encode()
                self._send(200, {"Content-Type": "application/json"}, out, body)

            def _file(self, repo_id: str, rev: str, name: str, body: bool) -> None:
                repo = srv.repos.get(repo_id)
                if repo is None:
                    return self._error(404, "RepoNotFound", body)
                if rev not in (*repo.revisions, repo.commit):
                    return self._error(404, "RevisionNotFound", body)
                if name not in repo.files:
                    return self._error(404, "EntryNotFound", body)
                listed = repo.files[name]
                data = srv.corrupt.get(name, listed)
                h = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
                if name.endswith(_LFS_SUFFIXES):
                    h["X-Linked-Etag"] = f'"{hashlib.sha256(listed).hexdigest()}"'
                    h["X-Linked-Size"] = str(len(listed))
                    h["ETag"] = f'"{hashlib.sha256(listed).hexdigest()}"'
                else:
                    h["ETag"] = f'"{_blob_id(listed)}"'
                start, code = 0, 200
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0] or 0)
                    if start >= len(data):
                        return self._send(416, {"Content-Range": f"bytes */{len(data)}"}, b"", body)
                    code = 206
                    h["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                part = data[start:]
                if not body:
                    return self._send(code, {**h, "Content-Length": str(len(part))}, b"", False)
                cut = srv.cut_once.pop(name, None) if start == 0 else None
                if cut is not None:  # promise the whole file, send a prefix, drop the connection
                    self.send_response(code)
                    for k, v in h.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(part)))
                    self.end_headers()
                    self.wfile.write(part[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    import socket

                    self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                self._send(code, h, part, True)
                return None

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime, self._httpd.shutdown)
        self._timer.daemon = True
        self._timer.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
