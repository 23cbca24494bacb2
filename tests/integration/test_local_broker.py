"""`choreo broker` against a real second broker: start, idempotent start, status, stop, and the
errors a user hits (port taken, stale pid file, missing toolchain)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from processors.localbroker import KafkaJars, LocalBroker, ToolchainError
from processors.localbroker.broker import free_port

pytestmark = pytest.mark.kafka


def choreo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "processors.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_broker_start_status_stop_cycle(tmp_path: Path):
    data_dir, port = str(tmp_path / "broker"), str(free_port())
    assert choreo("broker", "status", "--data-dir", data_dir).returncode == 1

    started = choreo("broker", "start", "--port", port, "--data-dir", data_dir)
    try:
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip() == f"127.0.0.1:{port}"
        assert (Path(data_dir) / "kafka-logs" / "meta.properties").is_file()

        again = choreo("broker", "start", "--port", port, "--data-dir", data_dir)
        assert again.returncode == 0
        assert "already running" in again.stderr

        status = choreo("broker", "status", "--data-dir", data_dir)
        assert status.returncode == 0
        assert f"127.0.0.1:{port}" in status.stdout
    finally:
        stopped = choreo("broker", "stop", "--data-dir", data_dir)
    assert stopped.returncode == 0 and stopped.stdout.strip() == "stopped"
    assert choreo("broker", "status", "--data-dir", data_dir).returncode == 1
    assert not (Path(data_dir) / "broker.pid").exists()


def test_port_taken_is_refused_with_the_fix(tmp_path: Path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = choreo("broker", "start", "--port", str(port), "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "--port N" in result.stderr


def test_stale_pid_file_does_not_block_start(tmp_path: Path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    broker = LocalBroker(data_dir=tmp_path, port=free_port())
    tmp_path.mkdir(exist_ok=True)
    broker.pid_file.write_text(f"{dead.pid} {broker.port}\n")
    assert broker.running_pid() is None
    assert not broker.pid_file.exists()
    try:
        assert broker.start() is True
        assert broker.running_pid() is not None
    finally:
        assert broker.stop() is True


def test_missing_java_names_the_fix(tmp_path: Path):
    result = choreo(
        "broker", "start", "--port", str(free_port()), "--data-dir", str(tmp_path), env={"PATH": str(tmp_path)}
    )
    assert result.returncode == 1
    assert "Java not found on PATH" in result.stderr


def test_old_java_names_the_fix(tmp_path: Path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    java = fake_bin / "java"
    java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
    java.chmod(0o755)
    result = choreo(
        "broker",
        "start",
        "--port",
        str(free_port()),
        "--data-dir",
        str(tmp_path / "d"),
        env={"PATH": f"{fake_bin}:/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert "Java 11 found" in result.stderr and "needs Java 17 or newer" in result.stderr


def test_missing_maven_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", str(Path(os.path.realpath("/usr/bin/java")).parent))
    jars = KafkaJars(cache_root=tmp_path / "empty-cache")
    with pytest.raises(ToolchainError, match=r"Maven \(mvn\) not found on PATH"):
        jars.resolve()


def test_unresolvable_jars_say_what_to_check(tmp_path: Path):
    pom = tmp_path / "pom.xml"
    pom.write_text(KafkaJars().pom.read_text().replace("<kafka.version>4.1.1<", "<kafka.version>0.0.0-nope<"))
    jars = KafkaJars(pom=pom, cache_root=tmp_path / "cache")
    with pytest.raises(ToolchainError, match=r"could not resolve the Kafka 0\.0\.0-nope jars with Maven"):
        jars.resolve()
    assert not jars.is_resolved()
