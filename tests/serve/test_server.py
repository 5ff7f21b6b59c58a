"""Where the server may listen, and ``altclip serve`` run for real as a user would start it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from altclip.cli import main
from altclip.runtime.memory import limit_malloc_arenas
from altclip.serve.server import check_bind, is_loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.com", False),
    ],
)
def test_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_other_addresses_need_a_token():
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "s3cret")
    with pytest.raises(
        ValueError, match=re.escape("--host 0.0.0.0 would let other machines reach the server; pass --token")
    ):
        check_bind("0.0.0.0", None)
    untokened = ("immich's /predict",)
    check_bind("127.0.0.1", None, untokened)  # loopback: immich on the same machine
    check_bind("0.0.0.0", "s3cret", untokened, allow_untokened=True)  # the named choice
    with pytest.raises(ValueError, match=r"reach immich's /predict without any token.*--compat-without-token"):
        check_bind("0.0.0.0", "s3cret", untokened)


def test_the_command_refuses_before_loading_anything(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("ALTCLIP_TOKEN", raising=False)
    code = main(["serve", str(tmp_path), "--host", "0.0.0.0"])
    assert code == 1 and "pass --token" in capsys.readouterr().err
    code = main(["serve", str(tmp_path)])
    assert code == 1 and "not an embedding folder" in capsys.readouterr().err
    code = main(["serve", "--immich", "--host", "0.0.0.0", "--token", "s3cret"])
    assert code == 1 and "--compat-without-token" in capsys.readouterr().err
    code = main(["serve"])
    assert code == 1 and "only --immich runs without one" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, token: str | None = None, body: dict | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_altclip_serve_end_to_end(photo_index, mixed_index):
    """The command as a user runs it: two named folders, a token from the environment, then Ctrl-C."""
    port = free_port()
    env = {**os.environ, "ALTCLIP_TOKEN": "s3cret", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "altclip.cli", "serve", f"photos={photo_index}", str(mixed_index)]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--batch-size", "8"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if get(f"{base}/healthz")[1] == {"status": "ok"}:
                    break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read() if server.stdout else ""
            time.sleep(0.2)
        assert get(f"{base}/api/indexes")[0] == 401
        status, indexes = get(f"{base}/api/indexes", token="s3cret")
        assert status == 200 and [i["name"] for i in indexes] == ["photos", "mixed"]
        status, found = get(f"{base}/api/search", token="s3cret", body={"text": "ein rotes Quadrat", "k": 4})
        assert status == 200 and len(found["results"]) == 4
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert f"http://127.0.0.1:{port}/ (token required on /api)" in output
    assert "photos" in output and "mixed" in output


def test_malloc_arenas_are_capped_on_glibc():
    import platform

    assert limit_malloc_arenas() is (platform.libc_ver()[0] == "glibc" and sys.platform.startswith("linux"))
