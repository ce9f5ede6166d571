"""Test helper: a real Redis Cluster of ``masters`` ``redis-server`` processes on loopback
(``cluster-enabled yes``), slots split evenly, built with ``redis-cli --cluster create`` —
the shape a BTP ``redis-cache`` binding with ``cluster_mode: true`` points at.

Like :mod:`redis_server`, ``redis-server`` (which ships ``redis-cli``) is installed from Debian's
packages when missing, and the tests fail rather than skip when that is impossible.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any

from redis_server import ensure_redis_server

__all__ = ["RedisCluster", "NodeCertificates", "start_cluster"]


class NodeCertificates:
    """A throw-away CA and one certificate for ``127.0.0.1``/``localhost`` usable by a server
    *and* a client (a TLS cluster's nodes authenticate each other on the cluster bus: Redis
    demands a client certificate there whatever ``tls-auth-clients`` says)."""

    def __init__(self) -> None:
        import datetime as dt
        import ipaddress
        from pathlib import Path

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        self.directory = Path(tempfile.mkdtemp(prefix="propagation-redis-tls-"))
        now = dt.datetime.now(dt.timezone.utc)
        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "redis test CA")])

        def build(subject: x509.Name, public: Any) -> x509.CertificateBuilder:
            return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public)
                    .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                    .not_valid_after(now + dt.timedelta(days=1)))

        ca = build(ca_name, ca_key.public_key()).add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(ca_key, hashes.SHA256())
        sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), key.public_key())
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        self.ca_file, self.cert_file, self.key_file = (self.directory / n for n in ("ca.pem", "node.pem", "node-key.pem"))
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_file.touch(mode=0o600)
        self.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))

    def client_context(self) -> Any:
        import ssl

        return ssl.create_default_context(cafile=str(self.ca_file))

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _node_port() -> int:
    """A port whose cluster-bus port (port + 10000) is free too, both below the kernel's
    ephemeral range (32768 on Linux by default), so no outgoing connection takes either
    between this check and the node's start: a node whose bus port is taken exits."""
    import random

    for _ in range(500):
        port = random.randint(12_000, 22_700)
        if all(_bindable(p) for p in (port, port + 10_000)):
            return port
    raise RuntimeError("no free port pair (port, port + 10000) for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ping(port: int, tls: Any = None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as plain:
            s = tls.client_context().wrap_socket(plain, server_hostname="localhost") if tls is not None else plain
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisCluster:
    """``masters`` cluster nodes (no replicas), each in its own directory; ``url`` is the
    first node with ``?cluster=true`` (any node works as a configuration endpoint)."""

    def __init__(self, binary: str, masters: int = 3, node_timeout_ms: int = 1000, tls: Any = None) -> None:
        self.binary = binary
        self.cli = os.path.join(os.path.dirname(binary), "redis-cli")
        if not os.access(self.cli, os.X_OK):
            self.cli = shutil.which("redis-cli") or "redis-cli"
        self.ports = [_node_port() for _ in range(masters)]
        self.dir = tempfile.mkdtemp(prefix="propagation-redis-cluster-")
        self.node_timeout_ms = node_timeout_ms
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        #: :class:`NodeCertificates`: every node speaks TLS only (clients and cluster bus).
        self.tls = tls

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.ports[0]}?cluster=true"

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        return ["--tls-cert-file", str(self.tls.cert_file), "--tls-key-file", str(self.tls.key_file),
                "--tls-ca-cert-file", str(self.tls.ca_file), "--tls-auth-clients", "no", "--tls-cluster", "yes"]

    def _cli(self) -> list[str]:
        return [self.cli, *(["--tls", "--cacert", str(self.tls.ca_file)] if self.tls is not None else [])]

    def _start_node(self, port: int) -> None:
        home = os.path.join(self.dir, str(port))
        os.makedirs(home, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [self.binary, *(["--port", "0", "--tls-port", str(port)] if self.tls else ["--port", str(port)]),
             *self._tls_args(), "--bind", "127.0.0.1", "--dir", home, "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning", "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(self.node_timeout_ms),
             "--cluster-require-full-coverage", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def start(self) -> "RedisCluster":
        for port in self.ports:
            self._start_node(port)
        deadline = time.monotonic() + 10
        while not all(_ping(p, self.tls) for p in self.ports):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs.values()):
                self.close()
                raise RuntimeError("cluster nodes did not answer PING within 10 s")
            time.sleep(0.02)
        created = subprocess.run([*self._cli(), "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                                  "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=60)
        if created.returncode != 0:
            self.close()
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-800:]} {created.stderr[-800:]}")
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Until every live node reports ``cluster_state:ok`` (gossip has converged)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [self.command(p, "CLUSTER", "INFO") for p in self.live_ports()]
            if all("cluster_state:ok" in s for s in states):
                return
            time.sleep(0.05)
        raise RuntimeError("cluster did not reach cluster_state:ok")

    def live_ports(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def command(self, port: int, *args: str) -> str:
        done = subprocess.run([*self._cli(), "-p", str(port), *args], capture_output=True, text=True, timeout=10)
        return done.stdout

    def kill(self, port: int) -> None:
        """SIGKILL one node (no shutdown, no goodbye to the cluster)."""
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def start_cluster(masters: int = 3, tls: Any = None) -> RedisCluster:
    binary = ensure_redis_server()
    if binary is None:
        raise RuntimeError("redis-server is not installed and could not be installed: apt-get install -y redis-server")
    return RedisCluster(binary, masters, tls=tls).start()


def cluster_worker(environ: dict[str, str], users: list[tuple[str, str]], names: list[str], threads: int,
                   rounds: int) -> dict[str, Any]:
    """Run in a spawned process: ``threads`` threads resolve the ``Authorization`` header for
    every (user, destination) ``rounds`` times through a ``Propagator`` built from ``environ``.
    Counts calls that raised and answers carrying another user's token (the token endpoint
    issues ``at-<user>-<client>-<n>``)."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    from propagation.bindings import Bindings
    from propagation.engine import Propagator
    from propagation.exchange.oauth import OAuthClient

    engine = Propagator(environ=environ, bindings=Bindings([]), oauth=OAuthClient(retries=0, sleep=lambda s: None))
    work = [(u, n) for _ in range(rounds) for u in users for n in names]
    random.shuffle(work)
    failed: list[str] = []
    wrong: list[str] = []

    def one(item: tuple[tuple[str, str], str]) -> str:
        (user, raw), name = item
        try:
            header = engine.headers(name, user_token=raw)["Authorization"]
        except Exception as exc:  # counted, not raised: the test asserts on the numbers
            failed.append(type(exc).__name__)
            return ""
        if not header.startswith(f"Bearer at-{user}-client-{name}-"):
            wrong.append(name)
        return header

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(one, work))
    cache = engine.cache
    return {"cache": type(cache).__name__, "cluster": getattr(cache, "cluster", None), "calls": len(results),
            "failed": failed, "wrong": len(wrong), "distinct": len(set(results) - {""})}
