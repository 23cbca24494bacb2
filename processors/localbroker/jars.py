"""Resolve the Kafka server jars with Maven into a cache that every run reuses.

Why Maven: the machines here reach Maven Central but no download site, and Maven gives us the
exact runtime dependency set of `org.apache.kafka:kafka_2.13` without vendoring a distribution.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from processors.errors import ChoreoError
from processors.settings import packaged_dir

POM_PATH = packaged_dir("kafka") / "pom.xml"  # ops/kafka/ in a checkout, package data in a wheel
LOG4J_CONFIG = packaged_dir("kafka") / "log4j2.properties"
MIN_JAVA = 17


class ToolchainError(ChoreoError, RuntimeError):
    """Java or Maven is missing or unusable; the message says how to fix it."""


def default_cache_root() -> Path:
    """`CHOREO_CACHE_DIR`, else `$XDG_CACHE_HOME/choreo-streams`, else `~/.cache/choreo-streams`."""
    if os.environ.get("CHOREO_CACHE_DIR"):
        return Path(os.environ["CHOREO_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "choreo-streams"


def java_major_version(java: str = "java") -> int:
    """The major version of `java`, raising ToolchainError with the fix when absent or too old."""
    exe = shutil.which(java)
    if exe is None:
        raise ToolchainError(
            f"Java not found on PATH: install a Java {MIN_JAVA}+ runtime "
            "(e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME/bin on PATH"
        )
    proc = subprocess.run([exe, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if not match:
        raise ToolchainError(f"could not read the Java version from `{exe} -version`: {proc.stderr.strip()}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_x" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise ToolchainError(
            f"Java {major} found at {exe}, but Kafka 4 needs Java {MIN_JAVA} or newer: "
            f"install Java {MIN_JAVA}+ and put it first on PATH"
        )
    return major


@dataclass(frozen=True)
class KafkaJars:
    """The resolved classpath of one Kafka version, keyed by the pom's content hash."""

    pom: Path = POM_PATH
    cache_root: Path | None = None

    @property
    def kafka_version(self) -> str:
        match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", self.pom.read_text())
        if not match:
            raise ToolchainError(f"{self.pom}: no <kafka.version> property")
        return match.group(1)

    @property
    def libs_dir(self) -> Path:
        digest = hashlib.sha256(self.pom.read_bytes()).hexdigest()[:12]
        root = self.cache_root or default_cache_root()
        return root / f"kafka-{self.kafka_version}-{digest}" / "libs"

    def is_resolved(self) -> bool:
        return (self.libs_dir / ".complete").is_file()

    def classpath(self) -> str:
        """The java classpath, resolving the jars first if this version is not cached yet."""
        self.resolve()
        return str(self.libs_dir / "*")

    def resolve(self, quiet: bool = True) -> Path:
        """Copy kafka_2.13 and its runtime dependencies into the cache (once per pom)."""
        if self.is_resolved():
            return self.libs_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ToolchainError(
                "Maven (mvn) not found on PATH: install it (e.g. `apt-get install maven`); "
                "it resolves the Kafka server jars from Maven Central"
            )
        java_major_version()
        target = self.libs_dir
        staging = target.with_name("libs.partial")
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            mvn,
            "-B",
            *(["-q"] if quiet else []),
            "-f",
            str(self.pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        proc = subprocess.run(cmd, capture_output=quiet, text=True, check=False)
        if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            detail = ((proc.stdout or "") + (proc.stderr or "")).strip().splitlines()[-15:]
            raise ToolchainError(
                f"could not resolve the Kafka {self.kafka_version} jars with Maven "
                f"(exit {proc.returncode}); check that Maven Central is reachable and that "
                f"{self.pom} names a published version.\n" + "\n".join(detail)
            )
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        (target / ".complete").write_text(self.kafka_version + "\n")
        return target
