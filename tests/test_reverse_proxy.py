"""nginx in front of the HTTP listener, for real: deploy/nginx.conf, filled in with test
values, run by Debian's nginx on loopback ports, with a certificate the test makes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import Pki, free_port, make_config, make_pki, running

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_or_skip() -> None:
    if not Path(NGINX).exists():
        if os.environ.get("CI"):
            raise RuntimeError("CI needs Debian's nginx (apt-get install nginx-light)")
        pytest.skip("nginx is not installed (apt-get install nginx-light)")


@contextmanager
def nginx(folder: Path, pki: Pki, daemon_port: int) -> Iterator[tuple[int, int]]:
    """deploy/nginx.conf with our values, run in the foreground; (http, https) ports."""
    http_port, https_port = free_port(), free_port()
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    for name, value in (("HTTPS_LISTEN", f"127.0.0.1:{https_port}"),
                        ("HTTP_LISTEN", f"127.0.0.1:{http_port}"),
                        ("LISTS_DOMAIN", "lists.example.org"),
                        ("CERT_FILE", str(pki.cert)), ("KEY_FILE", str(pki.key)),
                        ("DAEMON_HTTP", f"127.0.0.1:{daemon_port}")):
        site = site.replace(name, value)
    (folder / "site.conf").write_text(site)
    temp = folder / "temp"
    temp.mkdir()
    main = folder / "nginx.conf"
    root = "user root;\n" if os.geteuid() == 0 else ""
    main.write_text(
        f"{root}worker_processes 1;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log;\n"
        "events { worker_connections 64; }\n"
        "http {\n  access_log off;\n"
        + "".join(f"  {kind}_temp_path {temp}/{kind};\n"
                  for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        + f"  include {folder}/site.conf;\n}}\n")
    checked = subprocess.run([NGINX, "-t", "-c", str(main), "-p", str(folder)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen([NGINX, "-c", str(main), "-p", str(folder),
                                "-g", "daemon off;"], stderr=subprocess.PIPE)
    try:
        yield http_port, https_port
    finally:
        process.terminate()
        process.wait(10)


async def fetch(port: int, path: str, context: ssl.SSLContext | None,
                body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request through nginx (TLS when a context is given), read to its end."""
    for _ in range(100):         # nginx takes a moment to listen
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context,
                server_hostname="localhost" if context else None)
            break
        except OSError:
            await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"nothing listens on {port}")
    method = "POST" if body is not None else "GET"
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: lists.example.org\r\n"
                 f"Content-Length: {len(body or b'')}\r\nConnection: close\r\n\r\n".encode()
                 + (body or b""))
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, content = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {name.lower(): value for name, value in
              (line.split(": ", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), fields, content


async def test_nginx_in_front_serves_the_pages_over_tls_and_keeps_metrics_in(
        tmp_path: Path, sqlite_url: str) -> None:
    nginx_or_skip()
    pki = make_pki(tmp_path)
    config = make_config(tmp_path, sqlite_url)
    async with running(config) as daemon:
        with nginx(tmp_path, pki, daemon.ports["http"]) as (http_port, https_port):
            client = pki.client_context()
            health = await fetch(https_port, "/healthz", client)
            page = await fetch(https_port, "/sign-in", client)
            metrics = await fetch(https_port, "/metrics", client)
            plain = await fetch(http_port, "/sign-in?next=%2Fme", None)
            big = await fetch(https_port, "/sign-in", client, b"address=" + b"a" * 70_000)
            direct = await fetch(daemon.ports["http"], "/metrics", None)
    status, _, body = health
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, headers, body = page
    assert status == 200 and b"Mail me a link" in body
    assert "frame-ancestors 'none'" in headers["content-security-policy"], "passed on"
    assert headers["strict-transport-security"] == "max-age=31536000"
    assert metrics[0] == 404, "the metrics are not published"
    assert direct[0] == 200, "but the monitoring on this host reads them"
    assert plain[0] == 301
    assert plain[1]["location"] == "https://lists.example.org/sign-in?next=%2Fme"
    assert big[0] == 413, "bodies are capped before they reach the daemon"
