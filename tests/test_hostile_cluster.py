"""Cluster links treated as untrusted (issue 18, item 3).

``--dask local:N`` starts a cluster nobody else can join: another process that connects to
its scheduler, workers or nannies without the run's certificate (plain TCP, or TLS with no
certificate and no checks of its own) cannot run code there. The same intruder does run code
in an ordinary TCP cluster, so the attack is real. A ``tls://`` address without
certificates is one line and exit status 2 within seconds; certificates given with
``--dask-ca/--dask-cert/--dask-key`` join a TLS scheduler. Loopback only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _extras import require

distributed = require("distributed")

from napari_ish_annotator.cli import main  # noqa: E402
from napari_ish_annotator.core.features import distributed as ishd  # noqa: E402
from napari_ish_annotator.core.utils.errors import InputError  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Another user's process: for each address, try to run a function (which writes the marker
# file) over plain TCP and over TLS with no certificate, accepting any server certificate.
INTRUDER = r'''
import asyncio, pathlib, ssl, sys
from distributed.core import rpc
from distributed.protocol.pickle import dumps

marker = sys.argv[1]

def touch():
    pathlib.Path(marker).write_text("intruder ran code")
    return "ran"

def no_checks():
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return {"ssl_context": ctx}

async def attempt(address, op):
    host = address.split("://", 1)[1]
    for scheme, args in (("tcp", {}), ("tls", no_checks())):
        try:
            async with rpc(f"{scheme}://{host}", timeout=3, connection_args=args) as r:
                out = await asyncio.wait_for(getattr(r, op)(function=dumps(touch)), 5)
            print("RAN", scheme, address, out, flush=True)
        except Exception as exc:
            print("refused", scheme, address, type(exc).__name__, flush=True)

async def main():
    for item in sys.argv[2:]:
        op, address = item.split("=", 1)
        await attempt(address, op)

asyncio.run(main())
'''


def _intrude(marker: Path, targets: list[tuple[str, str]]) -> tuple[str, float]:
    """Run the intruder in its own process; (its output, seconds it took)."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", INTRUDER, str(marker),
                           *(f"{op}={address}" for op, address in targets)],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=SRC))
    return done.stdout + done.stderr, time.monotonic() - start


def _targets(client) -> list[tuple[str, str]]:
    info = client.scheduler_info()
    targets = [("run_function", client.scheduler.address)]
    for address, worker in info["workers"].items():
        targets.append(("run", address))
        if worker.get("nanny"):
            targets.append(("run", worker["nanny"]))
    return targets


def test_the_intruder_runs_code_in_a_plain_tcp_cluster(tmp_path):
    """The positive control: the same intruder against an unauthenticated TCP cluster."""
    marker = tmp_path / "owned"
    with distributed.LocalCluster(n_workers=1, processes=False, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster, \
            distributed.Client(cluster) as c:
        out, _ = _intrude(marker, _targets(c))
        import urllib.request

        port = c.scheduler_info()["services"]["dashboard"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as page:
            assert page.status == 200  # what _assert_no_pages expects to be gone
    assert "RAN tcp" in out and marker.exists(), out


def _assert_no_pages(client) -> None:
    """dask's HTTP servers (plain HTTP) show nothing: no dashboard, task or worker lists."""
    import urllib.error
    import urllib.request

    ports = [client.scheduler_info()["services"]["dashboard"],
             *client.run(lambda dask_worker: dask_worker.http_server.port).values()]
    for port in ports:
        for page in ("/status", "/json/identity.json", "/info/main/workers.html", "/metrics",
                     "/health"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(f"http://127.0.0.1:{port}{page}", timeout=5)


def test_local_cluster_cannot_be_joined_by_another_process(tmp_path):
    require("cryptography", reason="--dask local needs the [cluster] extra")
    marker = tmp_path / "owned"
    with ishd.connect("local:2") as client:
        targets = _targets(client)
        assert len(targets) == 5  # scheduler, 2 workers, 2 nannies
        assert all(a.startswith("tls://127.0.0.1:") for _, a in targets), targets
        _assert_no_pages(client)
        out, seconds = _intrude(marker, targets)
        assert client.run(lambda: 1)  # the run's own client still works
    assert not marker.exists(), out
    assert "RAN" not in out and out.count("refused") == 2 * len(targets), out
    assert seconds < 60, f"the intruder took {seconds:.0f} s"


@pytest.fixture
def no_tls_config():
    """No certificates from the user's dask configuration or DASK_* variables."""
    import dask

    with dask.config.set({"distributed.comm.require-encryption": None,
                          "distributed.comm.tls.ca-file": None,
                          "distributed.comm.tls.client.cert": None,
                          "distributed.comm.tls.client.key": None}):
        yield


@pytest.mark.parametrize(("args", "expect"), [
    (["--dask", "tls://127.0.0.1:9"], "a tls:// scheduler needs certificates"),
    (["--dask", "tls://127.0.0.1:9", "--dask-ca", "nowhere/ca.pem", "--dask-cert", "c.pem"],
     "--dask-ca: file not found"),
    (["--dask", "tls://127.0.0.1:9", "--dask-cert", "c.pem"], "are both needed"),
    (["--dask", "tls://127.0.0.1:9", "--dask-ca", "{bad}", "--dask-cert", "{bad}"],
     "cannot use the TLS certificates"),
    (["--dask", "tcp://127.0.0.1:9", "--dask-ca", "{bad}", "--dask-cert", "{bad}"],
     "are for a tls:// scheduler"),
    (["--dask", "local:1", "--dask-ca", "{bad}", "--dask-cert", "{bad}"],
     "--dask local makes its own certificate"),
    (["--dask-ca", "{bad}", "--dask-cert", "{bad}"], "need --dask tls://"),
])
def test_tls_without_usable_credentials_is_one_line_and_exit_2(tiny_dataset, tmp_path, capsys,
                                                              no_tls_config, args, expect):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    out = tmp_path / "p.csv"
    start = time.monotonic()
    code = main(["predict", str(tmp_path / "no-model"), str(tiny_dataset), "--out", str(out),
                 "--quiet", *(a.format(bad=bad) for a in args)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, err
    assert expect in err, err
    assert time.monotonic() - start < 10 and not out.exists()


def test_tls_without_credentials_names_the_options(no_tls_config):
    with pytest.raises(InputError, match="--dask-ca CA.pem --dask-cert CERT.pem"), \
            ishd.connect("tls://127.0.0.1:9"):
        pass


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=dask-test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_certificates_given_on_the_command_line_join_a_tls_scheduler(tmp_path, no_tls_config):
    cert, key = _self_signed(tmp_path)
    files = dict(tls_ca_file=str(cert), tls_client_cert=str(cert), tls_client_key=str(key),
                 tls_scheduler_cert=str(cert), tls_scheduler_key=str(key),
                 tls_worker_cert=str(cert), tls_worker_key=str(key))
    security = distributed.Security(require_encryption=True, **files)
    with distributed.LocalCluster(n_workers=1, processes=False, protocol="tls",
                                  host="127.0.0.1", security=security,
                                  dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        with ishd.connect(address, ishd.TLSFiles(str(cert), str(cert), str(key))) as client:
            ishd.check_workers(client)  # the worker runs this package at our version
        # the intruder again: no certificate, no way in
        out, _ = _intrude(tmp_path / "owned", _targets_of(cluster))
        assert "RAN" not in out and not (tmp_path / "owned").exists(), out


def _targets_of(cluster) -> list[tuple[str, str]]:
    return [("run_function", cluster.scheduler_address),
            *(("run", w.address) for w in cluster.workers.values())]


# ------------------------------------------------------------------ rough edges (issue 23)

@pytest.mark.parametrize(("dask", "expect"), [
    ("{passwd}", "is not a dask scheduler file"),
    ("{broken}", "is not a dask scheduler file (JSONDecodeError)"),
    ("{no_address}", 'it holds no scheduler "address"'),
    ("{fifo}", "an existing scheduler file"),
    ("local:100000", "at most"),
])
def test_bad_dask_addresses_are_one_line_and_exit_2(tiny_dataset, tmp_path, capsys, dask,
                                                    expect):
    """A file that is no scheduler file (a password file, broken JSON, a FIFO, which is never
    opened) and a local cluster of 100,000 workers: one line, exit 2, in seconds."""
    files = {"passwd": tmp_path / "passwd", "broken": tmp_path / "broken.json",
             "no_address": tmp_path / "s.json", "fifo": tmp_path / "fifo.json"}
    files["passwd"].write_text("root:x:0:0:root:/root:/bin/bash\n")
    files["broken"].write_text('{"address": "tcp://127.0.0.1:9",')
    files["no_address"].write_text('{"type": "Scheduler", "address": 8786}')
    os.mkfifo(files["fifo"])
    out = tmp_path / "p.csv"
    start = time.monotonic()
    code = main(["predict", str(tmp_path / "no-model"), str(tiny_dataset), "--out", str(out),
                 "--quiet", "--dask", dask.format(**files)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, err
    assert expect in err, err
    assert time.monotonic() - start < 10 and not out.exists()
    if dask == "local:100000":
        assert f"local:{ishd.max_local_workers()} or fewer" in err
        assert ishd.max_local_workers() <= 64


class _NotDask:
    """A loopback TCP server that is no dask scheduler: each connection gets ``reply`` (then
    the server closes it, or keeps it silent when ``hold``)."""

    def __init__(self, reply: bytes, hold: bool = False):
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.reply, self.hold, self.conns = reply, hold, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            with contextlib.suppress(OSError):
                conn.sendall(self.reply)
                if not self.hold:
                    conn.close()

    def close(self) -> None:
        for conn in [self.sock, *self.conns]:
            conn.close()


@pytest.mark.parametrize(("reply", "hold"), [
    (b"\xff" * 64, False),  # a frame length of 2^64 - 1 bytes: dask's MemoryError
    (b"\x03" + b"\x00" * 7 + b"\xff" * 24, False),  # three frames of nonsense lengths
    (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", False),  # a web server
    (b"", False),  # hangs up at once
    (b"SSH-2.0-OpenSSH_9.6\r\n", True),  # says hello, then nothing
])
def test_a_tcp_endpoint_that_is_no_dask_scheduler_is_one_input_error(monkeypatch, reply, hold):
    monkeypatch.setattr(ishd, "CONNECT_TIMEOUT_S", 3.0)
    server = _NotDask(reply, hold)
    start = time.monotonic()
    try:
        with pytest.raises(InputError) as err, ishd.connect(server.address):
            pass
    finally:
        server.close()
    text = str(err.value)
    assert text.startswith(server.address) and "cannot reach the dask scheduler" in text, text
    assert "\n" not in text and len(text) < 600, text
    assert time.monotonic() - start < 30
    # no half-made Client is left for the garbage collector: its __del__ inside the next
    # Client's start deadlocked the suite on dask's loop lock (seen after the 20th case)
    import gc

    from distributed import Client

    left = [o for o in gc.get_objects() if isinstance(o, Client) and o.status != "closed"]
    assert left == [], [o.status for o in left]
