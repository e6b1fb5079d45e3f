"""Checkpoint hub against a real HTTP server on 127.0.0.1: download, resume, checksum, offline, traversal."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from torch import nn

from longstream.pipelines import common
from longstream.pipelines.common import UserError
from longstream.pipelines.hub import Hub, validate_name


class _Server:
    """Serves ``root`` with Range support; can cut a response short or corrupt a file."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.cut_after: dict[str, int] = {}  # file -> cut the next full response after N bytes
        self.corrupt: dict[str, int] = {}  # file -> number of responses to corrupt
        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                srv.requests.append((name, self.headers.get("Range")))
                f = srv.root / self.path.lstrip("/")
                if not f.is_file():
                    self.send_error(404)
                    return
                data = f.read_bytes()
                if srv.corrupt.get(name, 0) > 0:
                    srv.corrupt[name] -= 1
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = srv.cut_after.pop(name, None)
                if cut is not None and start == 0:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 64)


@pytest.fixture
def setup(tmp_path):
    served = tmp_path / "served"
    ck = common.save_pretrained(_Tiny(), {"width": 64}, served / "demo" / "tiny", pipeline="demo",
                                task="unit test", metrics={"acc": 1.0})
    srv = _Server(served)
    reg = tmp_path / "registry.json"
    hub = Hub(checkpoints_dir=tmp_path / "shipped", registry_files=[reg], cache_dir=tmp_path / "cache",
              offline=False, timeout=5, retries=3)
    hub.register(ck, f"{srv.url}/demo/tiny", registry_file=reg, name="demo/tiny")
    yield hub, srv, ck
    srv.close()


def _gets(srv, name):
    return [r for r in srv.requests if r[0] == name]


def test_download_verify_and_cache_hit(setup):
    hub, srv, ck = setup
    d = hub.resolve("demo/tiny")
    assert d == hub.cache_dir_for("demo/tiny")
    for f in ("model.safetensors", "config.json", "README.md"):
        assert (d / f).read_bytes() == (ck / f).read_bytes()
    assert hub.verify("demo/tiny") == {"demo/tiny": []}
    n = len(srv.requests)
    assert hub.resolve("tiny", domain="demo") == d  # second time: from cache, no network
    assert len(srv.requests) == n
    # no temp or part files left behind
    assert not [p for p in (hub.cache / "checkpoints" / "demo").iterdir() if p.name.startswith(".")]
    assert not (hub.cache / "downloads" / "demo" / "tiny").exists()
    sd, meta, _ = common.load_pretrained(d, pipeline="demo")
    assert meta["metrics"] == {"acc": 1.0} and "lin.weight" in sd


def test_resume_after_cut_connection(setup):
    hub, srv, ck = setup
    size = (ck / "model.safetensors").stat().st_size
    srv.cut_after["model.safetensors"] = size // 3
    d = hub.download("demo/tiny")
    gets = _gets(srv, "model.safetensors")
    assert gets[0][1] is None  # first request: whole file, cut short
    assert any(r and r.startswith(f"bytes={size // 3}-") for _, r in gets[1:]), gets  # resumed with Range
    assert common.sha256_file(d / "model.safetensors") == common.sha256_file(ck / "model.safetensors")


def test_resume_partial_file_from_earlier_process(setup):
    hub, srv, ck = setup
    part_dir = hub.cache / "downloads" / "demo" / "tiny"
    part_dir.mkdir(parents=True)
    data = (ck / "model.safetensors").read_bytes()
    (part_dir / "model.safetensors.part").write_bytes(data[:1000])
    hub.download("demo/tiny")
    gets = _gets(srv, "model.safetensors")
    assert gets == [("model.safetensors", "bytes=1000-")]


def test_checksum_mismatch_refetched_once(setup, capsys):
    hub, srv, ck = setup
    srv.corrupt["model.safetensors"] = 1  # first copy is corrupt, the next is fine
    d = hub.download("demo/tiny")
    assert "re-fetching" in capsys.readouterr().err
    assert len([g for g in _gets(srv, "model.safetensors") if g[1] is None]) == 2
    assert hub.verify("demo/tiny") == {"demo/tiny": []} and d.exists()


def test_checksum_mismatch_persistent_fails_cleanly(setup):
    hub, srv, ck = setup
    srv.corrupt["model.safetensors"] = 99
    with pytest.raises(UserError, match="failed verification twice"):
        hub.download("demo/tiny")
    assert not hub.cache_dir_for("demo/tiny").exists()  # nothing half-written in the cache
    assert not (hub.cache / "downloads" / "demo" / "tiny" / "model.safetensors.part").exists()


def test_corrupt_or_truncated_cache_detected_and_refetched(setup):
    hub, srv, ck = setup
    d = hub.download("demo/tiny")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-10])  # truncated
    probs = hub.verify("demo/tiny")["demo/tiny"]
    assert probs and "truncated" in probs[0]
    with pytest.raises(UserError, match="corrupt|sha256"):
        common.load_pretrained(d)
    hub.download("demo/tiny")  # detects the bad copy and fetches again
    assert hub.verify("demo/tiny") == {"demo/tiny": []}


def test_offline_never_touches_network(setup, monkeypatch):
    hub, srv, ck = setup
    monkeypatch.setenv("LONGSTREAM_OFFLINE", "1")
    offline_hub = Hub(checkpoints_dir=hub.checkpoints_dir, registry_files=hub.registry_files, cache_dir=hub.cache)
    with pytest.raises(UserError, match="LONGSTREAM_OFFLINE"):
        offline_hub.resolve("demo/tiny")
    assert srv.requests == []
    monkeypatch.delenv("LONGSTREAM_OFFLINE")
    hub.download("demo/tiny")
    monkeypatch.setenv("LONGSTREAM_OFFLINE", "1")
    n = len(srv.requests)
    assert offline_hub.resolve("demo/tiny").exists()  # cached copies still work offline
    assert len(srv.requests) == n


@pytest.mark.parametrize(
    "name", ["../evil", "demo/../../etc", "demo/..", "a/b/c", "/etc/passwd", "demo/.hidden", "", "demo/x y", "..\\x"]
)
def test_names_cannot_escape_cache(setup, name):
    hub, srv, ck = setup
    with pytest.raises(UserError):
        hub.resolve(name)
    with pytest.raises(UserError):
        validate_name(name)
    assert srv.requests == []


def test_registry_file_names_are_validated(setup, tmp_path):
    hub, srv, ck = setup
    reg = json.loads(hub.registry_files[0].read_text())
    reg["models"]["demo/tiny"]["files"]["../../evil"] = {"sha256": "0" * 64, "size": 1}
    hub.registry_files[0].write_text(json.dumps(reg))
    with pytest.raises(UserError, match="bad file"):
        hub.download("demo/tiny")
    assert not (tmp_path / "evil").exists()


def test_resolution_order_path_shipped_cache(setup, tmp_path):
    hub, srv, ck = setup
    assert hub.resolve(str(ck)) == ck  # explicit path wins
    with pytest.raises(UserError, match="does not exist"):
        hub.resolve(str(tmp_path / "nowhere" / "ckpt"))
    cached = hub.download("demo/tiny")
    shipped = hub.checkpoints_dir / "demo" / "tiny"
    common.save_pretrained(_Tiny(), {}, shipped, pipeline="demo", task="shipped")
    assert hub.resolve("demo/tiny") == shipped  # shipped before cache
    assert cached.exists()
    ent = hub.entry("demo/tiny")
    assert ent.shipped == shipped and ent.urls  # shipped dir merged with the remote entry
    with pytest.raises(UserError, match="unknown model"):
        hub.resolve("demo/other")


def test_unreachable_server_is_a_user_error(tmp_path):
    reg = tmp_path / "r.json"
    reg.write_text(json.dumps({"models": {"demo/x": {"urls": ["http://127.0.0.1:9/none"], "files": {
        "model.safetensors": {"sha256": "0" * 64, "size": 3}, "config.json": {"sha256": "0" * 64, "size": 3}}}}}))
    hub = Hub(checkpoints_dir=tmp_path / "s", registry_files=[reg], cache_dir=tmp_path / "c", offline=False,
              timeout=2, retries=1)
    with pytest.raises(UserError, match="could not download"):
        hub.download("demo/x")


def test_concurrent_downloads_fetch_once(setup):
    hub, srv, ck = setup
    results, errors = [], []

    def worker():
        try:
            results.append(hub.download("demo/tiny"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(set(results)) == 1
    assert len(_gets(srv, "model.safetensors")) == 1  # the others waited on the lock and found it done
    assert hub.verify("demo/tiny") == {"demo/tiny": []}


def test_cli_end_to_end_remote_model(tmp_path, monkeypatch, capsys):
    """`hub register` -> `hub list/download/verify` -> `template evaluate --checkpoint <remote name>`."""
    import shutil

    from longstream.apps.cli import main

    repo = Path(__file__).resolve().parents[1]
    served = tmp_path / "served" / "template" / "sine-remote"
    shutil.copytree(repo / "checkpoints" / "template" / "sine-attn", served)
    srv = _Server(tmp_path / "served")
    try:
        reg = tmp_path / "extra_registry.json"
        monkeypatch.setenv("LONGSTREAM_HUB_REGISTRY", str(reg))
        monkeypatch.setenv("LONGSTREAM_HOME", str(tmp_path / "home"))
        monkeypatch.delenv("LONGSTREAM_OFFLINE", raising=False)
        assert main(["hub", "register", str(served), "--url", f"{srv.url}/template/sine-remote",
                     "--registry", str(reg)]) == 0
        capsys.readouterr()
        assert main(["hub", "list", "--json"]) == 0
        names = {m["name"] for m in json.loads(capsys.readouterr().out.strip().splitlines()[-1])}
        assert {"template/sine-remote", "template/sine-attn"} <= names
        assert main(["hub", "verify", "template/sine-remote"]) == 0  # not downloaded yet: not a failure
        # evaluating by name downloads into $LONGSTREAM_HOME, verified
        assert main(["template", "evaluate", "--checkpoint", "template/sine-remote", "--json"]) == 0
        metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert metrics["accuracy"] > 0.9
        assert (tmp_path / "home" / "checkpoints" / "template" / "sine-remote" / "model.safetensors").exists()
        n = len(srv.requests)
        assert main(["hub", "verify", "template/sine-remote"]) == 0
        capsys.readouterr()
        monkeypatch.setenv("LONGSTREAM_OFFLINE", "1")  # cached: works offline, no request
        assert main(["template", "predict", "--checkpoint", "sine-remote", "gen:1"]) == 0
        assert len(srv.requests) == n
        # corrupt the cached weights: verify fails with exit 2, download --force repairs
        w = tmp_path / "home" / "checkpoints" / "template" / "sine-remote" / "model.safetensors"
        w.write_bytes(b"\0" * w.stat().st_size)
        assert main(["hub", "verify", "template/sine-remote"]) == 2
        assert main(["hub", "download", "template/sine-remote"]) == 2  # offline: refuses to fetch
        monkeypatch.delenv("LONGSTREAM_OFFLINE")
        assert main(["hub", "download", "template/sine-remote"]) == 0
        assert main(["hub", "verify", "template/sine-remote"]) == 0
    finally:
        srv.close()
