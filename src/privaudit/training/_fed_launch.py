"""Starts a local Flower deployment (SuperLink + one SuperNode per client), runs the app, stops it all.

Every process is started in its own session (process group) and stopped by that
group's id, the process's own PID: SIGTERM, then SIGKILL after a grace period.
A watchdog timer does the same once `timeout_s` has passed, so nothing outlives
the run even if `flwr run` hangs. All connections are insecure HTTP on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .. import _validate
from ._fed_settings import FederatedSettings

__all__ = ["LAST_PIDS", "MAX_SUPERNODES", "run_flower_deployment"]

#: `--engine flower` starts one SuperNode per client; more than this is a job for the embedded simulator.
MAX_SUPERNODES = 32
_CONNECTION = "privaudit-local"
#: PIDs (= process-group ids) the last deployment started, all stopped when it returned (for tests).
LAST_PIDS: list[int] = []


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _executable(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise ValueError(f"{name!r} not found on PATH: --engine flower needs `pip install privaudit[flower]`.")
    return found


class _Processes:
    """The processes of one deployment; `stop()` ends each one's process group."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._lock = threading.Lock()

    def start(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
        log.close()
        with self._lock:
            self.procs.append((name, proc))
            LAST_PIDS.append(proc.pid)
        return proc

    def stop(self, grace_s: float = 10.0) -> None:
        with self._lock:
            procs = list(reversed(self.procs))
        for _, proc in procs:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for _, proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc.pid, signal.SIGKILL)  # children left in the group (superexec, apps)
            if proc.poll() is None:
                proc.wait(timeout=5)
        for _, proc in procs:  # orphans of the group are reaped by init: wait until none is left
            _wait_group_gone(proc.pid, timeout_s=grace_s)

    def tail(self, lines: int = 15) -> str:
        out = []
        for name, _ in self.procs:
            text = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {name} ---\n" + "\n".join(text))
        return "\n".join(out)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_group_gone(pgid: int, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        _signal_group(pgid, signal.SIGKILL)
        time.sleep(0.2)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {proc.returncode} before listening.")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise RuntimeError(f"flower-superlink did not listen on 127.0.0.1:{port} within {timeout_s} s.")


def _write_app(folder: Path, settings_json: str, timeout_s: float) -> None:
    import tomli_w

    folder.mkdir(parents=True)
    (folder / "privaudit_flower_app.py").write_text(
        '"""The privaudit Flower App: see privaudit.training._fed_flower."""\n\n'
        "from privaudit.training._fed_flower import client_app, server_app\n\n"
        '__all__ = ["client_app", "server_app"]\n')
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "privaudit-federated", "version": "1.0.0", "description": "privaudit DP-FedAvg",
                    "license": "Apache-2.0", "dependencies": []},
        "tool": {"hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
                 "flwr": {"app": {"publisher": "privaudit",
                                  "components": {"serverapp": "privaudit_flower_app:server_app",
                                                 "clientapp": "privaudit_flower_app:client_app"},
                                  "config": {"settings": settings_json, "timeout-s": float(timeout_s)}}}},
    }
    (folder / "pyproject.toml").write_text(tomli_w.dumps(project))


def run_flower_deployment(settings: FederatedSettings, *, timeout_s: float = 600.0) -> Any:
    """Runs `settings` (engine 'flower') on a local SuperLink and one SuperNode per client.

    Returns the `FederatedResult` read back from the run directory the ServerApp wrote.

    Raises:
        ValueError: more than `MAX_SUPERNODES` clients, Flower not installed, or an existing run.
        RuntimeError: the deployment failed or timed out (the message ends with the logs' tails;
            the logs stay in a `privaudit-flower-*` temporary folder, named on stderr).
    """
    from ._fed_build import load_federation
    from ._fed_job import FederatedResult

    _validate.positive(timeout_s=timeout_s)
    s = settings
    n = load_federation(s).partition.num_clients
    if n > MAX_SUPERNODES:
        raise ValueError(f"Expected at most {MAX_SUPERNODES} clients with engine='flower' (one SuperNode "
                         f"each), got {n}: use the embedded simulator for more.")
    out = Path(s.out).resolve()
    if (out / s.run_name()).exists():
        raise ValueError(f"Run directory {str(out / s.run_name())!r} exists: choose another --name.")
    exe = {k: _executable(k) for k in ("flower-superlink", "flower-supernode", "flwr")}
    settings_json = json.dumps({k: v for k, v in dataclasses.asdict(s).items() if v is not None} | {"out": str(out)})
    work = Path(tempfile.mkdtemp(prefix="privaudit-flower-"))
    home, app = work / "flwr-home", work / "app"
    home.mkdir()
    port = _free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "{_CONNECTION}"\n\n[superlink.{_CONNECTION}]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    _write_app(app, settings_json, timeout_s)
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               PYTHONUNBUFFERED="1")
    env["PATH"] = os.pathsep.join([str(Path(exe["flwr"]).parent), env.get("PATH", "")])
    procs = _Processes(work)
    LAST_PIDS.clear()
    watchdog = threading.Timer(timeout_s, procs.stop)
    watchdog.daemon = True
    watchdog.start()
    t0 = time.monotonic()
    try:
        link = procs.start("superlink", [exe["flower-superlink"], "--insecure", "--host", "127.0.0.1",
                                         "--port", str(port), "--disable-runtime-dependency-installation"],
                           env, work)
        _wait_for_port(port, link, min(120.0, timeout_s))
        for k in range(n):
            procs.start(f"supernode-{k}", [exe["flower-supernode"], "--insecure", "--superlink",
                                            f"127.0.0.1:{port}", "--host", "127.0.0.1", "--port", str(_free_port()),
                                            "--node-config", f"partition-id={k} num-partitions={n}"], env, work)
        run = procs.start("flwr-run", [exe["flwr"], "run", str(app), _CONNECTION, "--stream"], env, work)
        summary = out / s.run_name() / "summary.json"
        while not summary.exists():
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"The Flower run did not finish within {timeout_s} s.\n{procs.tail()}")
            if run.poll() is not None and not summary.exists():
                time.sleep(2.0)  # the ServerApp may still be writing
                if not summary.exists():
                    raise RuntimeError(f"`flwr run` ended (code {run.returncode}) without a run directory."
                                       f"\n{procs.tail()}")
            time.sleep(0.5)
    except BaseException:
        watchdog.cancel()
        procs.stop()
        print(f"Flower deployment logs kept in {work}", file=sys.stderr)
        raise
    watchdog.cancel()
    procs.stop()
    shutil.rmtree(work, ignore_errors=True)
    data = json.loads(summary.read_text())
    return FederatedResult(run_dir=out / s.run_name(), rounds=int(data["rounds"]), planned_rounds=s.rounds,
                           epsilon=float("inf") if data["epsilon"] is None else float(data["epsilon"]),
                           delta=s.delta, noise_multiplier=data["noise_multiplier"],
                           test_accuracy=float(data["test_accuracy"]), seconds=time.monotonic() - t0,
                           interrupted=data["status"] != "complete", num_clients=n)
