"""`choreo contracts check|compat`: exit codes 0/1/2, JSON output, and the violations listed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from processors.cli.contracts import app
from processors.settings import REPO_ROOT

runner = CliRunner()
SCHEMAS = REPO_ROOT / "schemas"


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A git repository holding a copy of the contracts and schemas, committed once."""
    shutil.copytree(REPO_ROOT / "contracts", tmp_path / "contracts")
    shutil.copytree(SCHEMAS, tmp_path / "schemas")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "contracts", "schemas"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "base"], check=True)
    return tmp_path


def dirs(tree: Path) -> list[str]:
    return ["--contracts-dir", str(tree / "contracts"), "--schemas-dir", str(tree / "schemas")]


def rewrite(path: Path, change: Callable[[dict[str, Any]], object]) -> None:
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema, indent=2))


# ---------------------------------------------------------------------- check
def test_check_passes_on_the_repository() -> None:
    code, out, _ = run("check", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["ok"] is True and report["violations"] == []
    assert {"event_type": "order.created", "versions": [1, 2], "compatibility": "FULL_TRANSITIVE"} in report[
        "contracts"
    ]


def test_check_human_output() -> None:
    code, out, _ = run("check")
    assert code == 0
    assert "order.created" in out and re.search(r"ok: \d+ contracts", out)


def test_check_reports_an_incompatible_new_version(tree: Path) -> None:
    rewrite(
        tree / "schemas" / "order.created" / "v2.avsc",
        lambda s: s["fields"].append({"name": "channel", "type": "string", "doc": "x"}),
    )
    code, out, _ = run("check", "--json", *dirs(tree))
    assert code == 1
    assert json.loads(out)["violations"] == [
        {
            "event_type": "order.created",
            "version": "v2",
            "against": "v1",
            "direction": "backward",
            "path": "channel",
            "reason": "reader field 'channel' is missing in the writer and has no default",
        }
    ]
    code, out, _ = run("check", *dirs(tree))
    assert code == 1 and "channel" in out and "1 violation(s)" in out


def test_check_base_catches_changed_and_removed_versions(tree: Path) -> None:
    assert run("check", "--base", "HEAD", *dirs(tree))[0] == 0
    # Editing a published version in place: compatible on its own, but v1 data already exists.
    rewrite(tree / "schemas" / "order.created" / "v1.avsc", lambda s: s["fields"][1].update(name="client_id"))
    rewrite(tree / "schemas" / "order.created" / "v2.avsc", lambda s: s["fields"][1].update(name="client_id"))
    # Removing a version (and un-listing it).
    (tree / "schemas" / "order.created" / "v2.avsc").unlink()
    contract = tree / "contracts" / "order.created.yaml"
    contract.write_text(
        contract.read_text().replace("versions: [1, 2]", "versions: [1]").replace("  - shipping_address\n", "")
    )
    # Rewording a doc is allowed.
    rewrite(tree / "schemas" / "order.confirmed" / "v1.avsc", lambda s: s.update(doc="Reworded."))
    code, out, _ = run("check", "--base", "HEAD", "--json", *dirs(tree))
    assert code == 1
    assert [(v["event_type"], v["version"], v["reason"]) for v in json.loads(out)["violations"]] == [
        ("order.created", "v1", "schema version changed since HEAD; publish a new version instead"),
        ("order.created", "v2", "schema version removed since HEAD"),
    ]


def test_check_exit_2_on_unreadable_input(tree: Path) -> None:
    contract = tree / "contracts" / "order.created.yaml"
    contract.write_text(contract.read_text().replace("key_field: order_id", "key_field: orderid"))
    code, out, err = run("check", *dirs(tree))
    assert code == 2
    assert "order.created.yaml: key_field: 'orderid' is not a field of schema v1" in err


def test_check_exit_2_on_unknown_revision(tree: Path) -> None:
    code, _, err = run("check", "--base", "no-such-rev", *dirs(tree))
    assert code == 2 and "git ls-tree" in err


# ---------------------------------------------------------------------- compat
def test_compat_compatible() -> None:
    code, out, _ = run(
        "compat",
        str(SCHEMAS / "order.created" / "v2.avsc"),
        str(SCHEMAS / "order.created" / "v1.avsc"),
        "--mode",
        "FULL_TRANSITIVE",
    )
    assert code == 0 and "compatible" in out


def test_compat_incompatible_json(tmp_path: Path) -> None:
    new = tmp_path / "new.avsc"
    schema = json.loads((SCHEMAS / "order.created" / "v1.avsc").read_text())
    schema["fields"][5]["type"] = "int"  # total_minor long -> int
    new.write_text(json.dumps(schema))
    code, out, _ = run("compat", str(new), str(SCHEMAS / "order.created" / "v1.avsc"), "--mode", "backward", "--json")
    assert code == 1
    report = json.loads(out)
    assert report["compatible"] is False and report["mode"] == "BACKWARD"
    assert report["problems"] == [
        {
            "against": str(SCHEMAS / "order.created" / "v1.avsc"),
            "against_index": 0,
            "direction": "backward",
            "path": "total_minor",
            "reason": "reader type: int not compatible with writer type: long",
            "kind": "TYPE_MISMATCH",
        }
    ]


def test_compat_transitive_uses_every_listed_version(tmp_path: Path) -> None:
    v1, v2, v3 = (tmp_path / f"v{i}.avsc" for i in (1, 2, 3))
    base = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"}]}
    v1.write_text(json.dumps(base))
    v2.write_text(json.dumps({**base, "fields": [{"name": "a", "type": "string", "default": ""}]}))
    v3.write_text(json.dumps({**base, "fields": []}))
    assert run("compat", str(v3), str(v2), str(v1), "--mode", "FORWARD")[0] == 0
    code, out, _ = run("compat", str(v3), str(v2), str(v1), "--mode", "FORWARD_TRANSITIVE", "--json")
    assert code == 1
    assert [(p["against"], p["path"]) for p in json.loads(out)["problems"]] == [(str(v1), "a")]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--mode", "SIDEWAYS"], "--mode: 'SIDEWAYS' is not one of NONE"),
        ([], "Missing option"),
        (["--mode", "FULL", "--bogus"], "No such option"),
    ],
)
def test_compat_usage_errors_exit_2(args: list[str], message: str) -> None:
    v1 = str(SCHEMAS / "order.created" / "v1.avsc")
    code, _, err = run("compat", v1, v1, *args)
    assert code == 2
    assert message in err


def test_compat_unreadable_schema_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.avsc"
    bad.write_text("{oops")
    code, _, err = run("compat", str(bad), str(SCHEMAS / "order.created" / "v1.avsc"), "--mode", "FULL")
    assert code == 2 and "bad.avsc: not valid JSON" in err
    bad.write_text(json.dumps({"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}))
    code, _, err = run("compat", str(bad), str(SCHEMAS / "order.created" / "v1.avsc"), "--mode", "FULL", "--json")
    assert code == 2 and "new schema: invalid Avro schema" in err
    code, _, err = run("compat", str(tmp_path / "missing.avsc"), str(bad), "--mode", "FULL")
    assert code == 2 and "missing.avsc: cannot read" in err


def test_registered_in_the_choreo_command() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "processors.cli.main",
            "contracts",
            "compat",
            str(SCHEMAS / "order.created" / "v2.avsc"),
            str(SCHEMAS / "order.created" / "v1.avsc"),
            "--mode",
            "FULL",
            "--json",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["compatible"] is True
