"""Worker processes started by ``cadence run`` / ``demo`` and by the tests, with readiness checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cadence.runtime import RuntimeStartError, _die_with_parent, free_port


class WorkerProcess:
    """``python -m cadence worker`` as a child; ready once its consumer group has its partitions."""

    def __init__(self, env: dict[str, str], data_dir: Path, name: str = "worker-1", web_port: int | None = None):
        self.name = name
        self.web_port = web_port or free_port()
        self.log_path = data_dir / f"{name}.log"
        self.env = dict(env)
        self.env.update({"CADENCE_WEB_PORT": str(self.web_port), "CADENCE_DATA_DIR": str(data_dir / name)})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cadence", "worker"], env=self.env, stdout=logf, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
            )
        return self

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1) as resp:
                return json.loads(resp.read())
        except Exception:
            return None

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=2) as resp:
            return resp.read().decode()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeStartError(f"{self.name} exited with code {self.proc.returncode}; see {self.log_path}")
            h = self.health()
            if h and h.get("ready"):
                return
            time.sleep(0.2)
        raise RuntimeStartError(f"{self.name} was not ready after {timeout_s:.0f}s; see {self.log_path}")

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def worker_env(base: dict[str, str], **settings: str) -> dict[str, str]:
    env = dict(base)
    env.update({f"CADENCE_{k.upper()}": v for k, v in settings.items()})
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")  # see cadence/__init__.py
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    return env
