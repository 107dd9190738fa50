"""The mount server's socket protocol against hostile or wrong input, in-process (no FUSE needed):
every bad request gets an error reply naming the problem and the server keeps serving."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lazypull.errors import ImageError, MountError
from lazypull.fs.config import FsConfig
from lazypull.snapshot import MountClient
from lazypull.snapshot.server import MountDaemon


class _NoImages:
    def resolve(self, name: str, platform: Any = None) -> Any:
        raise ImageError(f"image {name!r} not found")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[MountDaemon]:
    d = MountDaemon(tmp_path, FsConfig(), store_factory=lambda _root: _NoImages(),
                    client_factory=lambda _insecure: None)
    d.start()
    thread = threading.Thread(target=d.serve_forever, daemon=True)
    thread.start()
    yield d
    d.stop()
    thread.join(5)
    d.cleanup()


def _raw(path: Path, payload: bytes) -> list[dict[str, Any]]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_bad_requests_get_error_replies(daemon: MountDaemon) -> None:
    replies = _raw(daemon.paths.socket, b"not json\n[1,2]\n{\"op\": \"frobnicate\"}\n"
                   b"{\"op\": \"mount_image\", \"args\": {}}\n{\"op\": \"mount_image\", \"args\": []}\n"
                   b"{\"op\": \"wait_prefetch\", \"args\": {\"digests\": \"x\"}}\n{\"op\": \"ping\"}\n")
    assert [r["ok"] for r in replies] == [False] * 6 + [True]
    messages = [r["error"]["message"] for r in replies[:6]]
    assert "not JSON" in messages[0]
    assert "expected an object" in messages[1]
    assert "unknown request 'frobnicate'" in messages[2]
    assert "'image'" in messages[3]
    assert "args must be an object" in messages[4]
    assert "digests must be a list" in messages[5]
    assert replies[6]["result"]["root"] == str(daemon.root)


def test_bad_pull_and_program_arguments_are_refused_before_any_work(daemon: MountDaemon) -> None:
    replies = _raw(daemon.paths.socket,
                   b"{\"op\": \"pull_image\", \"args\": {}}\n"
                   b"{\"op\": \"pull_image\", \"args\": {\"ref\": \"r/x:1\", \"platforms\": \"linux\"}}\n"
                   b"{\"op\": \"pull_image\", \"args\": {\"ref\": \"r/x:1\", \"platforms\": [\"\"]}}\n"
                   b"{\"op\": \"mount_image\", \"args\": {\"image\": \"ghost\", \"program\": \"sh\"}}\n"
                   b"{\"op\": \"mount_image\", \"args\": {\"image\": \"ghost\", \"program\": {}}}\n"
                   b"{\"op\": \"ping\"}\n")
    assert [r["ok"] for r in replies] == [False] * 5 + [True]
    messages = [r["error"]["message"] for r in replies[:5]]
    assert "'ref'" in messages[0]
    assert "platforms must be a list" in messages[1] and "platforms must be a list" in messages[2]
    assert "program must be an object" in messages[3]
    assert "'argv0'" in messages[4], "the program is checked before the (missing) image is looked up"


def test_client_gets_typed_errors_and_empty_state(daemon: MountDaemon) -> None:
    mc = MountClient(daemon.root, autostart=False)
    with pytest.raises(ImageError, match="'ghost' not found"):
        mc.mount_image("ghost")
    with pytest.raises(MountError, match="not held"):
        mc.release_image("ghost")
    assert mc.list_mounts() == [] and mc.unmount_unused() == []
    assert mc.stats()["layers"] == {}
    assert mc.wait_prefetch([], 1.0) is True
    mc.close()


def test_one_server_per_root(daemon: MountDaemon) -> None:
    second = MountDaemon(daemon.root, FsConfig())
    with pytest.raises(MountError, match="another mount server"):
        second.start()


def test_no_server_and_no_autostart_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MountError, match="did not answer"):
        MountClient(tmp_path, autostart=False).list_mounts()


def test_restore_drops_holds_of_removed_images(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "state.json").write_text(json.dumps({"version": 1, "holds": [
        {"holder": "c1", "image": "ghost", "digests": ["sha256:" + "a" * 64], "insecure": False}]}))
    d = MountDaemon(tmp_path, FsConfig(), store_factory=lambda _root: _NoImages(),
                    client_factory=lambda _insecure: None)
    d.start()
    try:
        assert d.restored.wait(10)
        assert json.loads((tmp_path / "run" / "state.json").read_text())["holds"] == []
    finally:
        d.cleanup()


def test_a_server_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("prefetch = [\n")
    with pytest.raises(MountError, match=r"exited during startup.*not valid TOML"):
        MountClient(tmp_path).ping()


def test_daemon_takes_an_explicit_config_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.toml"
    bad.write_text("nonsense = 1\n")
    proc = subprocess.run([sys.executable, "-m", "lazypull", "--root", str(tmp_path / "root"), "daemon",
                           "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "unknown setting 'nonsense'" in proc.stderr
