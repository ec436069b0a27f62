"""Audit bundles verify offline; edited bundles and bad inputs fail with distinct codes."""

from __future__ import annotations

import json
import sqlite3
import zipfile
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from dspy_ledger.cli import app
from dspy_ledger.ledger import Ledger
from ledger.domain import Dataset

runner = CliRunner()


@pytest.fixture(autouse=True)
def parallel_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    """Verify in ranges of 4 leaves over 2 workers, so that several workers run."""
    monkeypatch.setenv("DSPY_LEDGER_VERIFY_RANGE", "4")
    monkeypatch.setenv("DSPY_LEDGER_VERIFY_WORKERS", "2")


def _make_ledger(url: str, offset: int = 0) -> None:
    with Ledger(url, actor="auditor") as ledger:
        ledger.app.save_aggregates(
            *[
                Dataset.register(
                    digest=f"b{i}", example_digests=[], examples=[{"i": i}], actor="auditor"
                )
                for i in range(offset, offset + 25)
            ]
        )


@pytest.fixture
def signed(tmp_path: Path, ledger_url: str) -> dict[str, Path | str]:
    """A ledger (on each backend), a key pair, a signed checkpoint file and a signed bundle."""
    url = ledger_url
    _make_ledger(url)
    key = tmp_path / "key.pem"
    assert runner.invoke(app, ["keygen", str(key)]).exit_code == 0
    result = runner.invoke(app, ["checkpoint", "--db", url, "--sign", str(key)])
    assert result.exit_code == 0, result.output
    checkpoint = tmp_path / "cp.txt"
    checkpoint.write_text(result.stdout)
    bundle = tmp_path / "b.zip"
    result = runner.invoke(
        app, ["export", "--bundle", str(bundle), "--db", url, "--sign", str(key)]
    )
    assert result.exit_code == 0, result.output
    return {"url": url, "key": key, "pub": Path(f"{key}.pub"), "cp": checkpoint, "zip": bundle}


def _rewrite(bundle: Path, member: str, edit: object) -> None:
    with zipfile.ZipFile(bundle) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members[member] = edit(members[member])  # type: ignore[operator]
    with zipfile.ZipFile(bundle, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def verify(*args: object) -> int:
    return runner.invoke(app, ["verify-bundle", *map(str, args)]).exit_code


def test_a_signed_bundle_verifies_against_the_older_checkpoint_and_key(signed: dict) -> None:
    assert verify(signed["zip"], "--against", signed["cp"], "--public-key", signed["pub"]) == 0


def test_verify_against_the_checkpoint_file_passes_on_the_database(signed: dict) -> None:
    result = runner.invoke(app, ["verify", "--db", signed["url"], "--against", str(signed["cp"])])
    assert result.exit_code == 0, result.output


def test_an_edited_event_fails_to_verify(signed: dict) -> None:
    def edit(data: bytes) -> bytes:
        lines = data.decode().splitlines()
        entry = json.loads(lines[3])
        entry["version"] += 1
        lines[3] = json.dumps(entry)
        return ("\n".join(lines) + "\n").encode()

    _rewrite(signed["zip"], "events.jsonl", edit)
    assert verify(signed["zip"]) == 17


def test_a_removed_proof_step_fails_to_verify(signed: dict) -> None:
    def edit(data: bytes) -> bytes:
        lines = data.decode().splitlines()
        entry = json.loads(lines[0])
        entry["proof"] = entry["proof"][:-1]
        lines[0] = json.dumps(entry)
        return ("\n".join(lines) + "\n").encode()

    _rewrite(signed["zip"], "events.jsonl", edit)
    assert verify(signed["zip"]) == 17


def test_a_checkpoint_from_another_ledger_fails(signed: dict, tmp_path: Path) -> None:
    other = f"sqlite:///{tmp_path}/other.db"
    _make_ledger(other, offset=100)
    foreign = runner.invoke(app, ["checkpoint", "--db", other]).stdout
    _rewrite(signed["zip"], "checkpoint.txt", lambda _: foreign.encode())
    assert verify(signed["zip"]) == 17


def test_a_signature_by_another_key_is_refused(signed: dict, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.pem"
    runner.invoke(app, ["keygen", str(stranger)])
    assert verify(signed["zip"], "--public-key", f"{stranger}.pub") == 16


def test_a_truncated_zip_is_a_corrupt_bundle(signed: dict) -> None:
    data = signed["zip"].read_bytes()
    signed["zip"].write_bytes(data[: len(data) // 2])
    result = runner.invoke(app, ["verify-bundle", str(signed["zip"])])
    assert result.exit_code == 22
    assert "corrupt or truncated" in result.output


def test_a_checkpoint_file_in_the_wrong_format_is_refused(signed: dict, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("tree size: 12\nroot: abc\n")
    assert verify(signed["zip"], "--against", wrong) == 21


def test_a_missing_key_file_is_a_missing_file(signed: dict, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["checkpoint", "--db", signed["url"], "--sign", str(tmp_path / "nope.pem")]
    )
    assert result.exit_code == 20
    assert "Cannot read the key file" in result.output


def test_a_public_key_is_not_a_signing_key(signed: dict) -> None:
    result = runner.invoke(app, ["checkpoint", "--db", signed["url"], "--sign", str(signed["pub"])])
    assert result.exit_code == 23


def _tamper(url: str, sqlite_statement: str, postgres_statement: str) -> None:
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
            connection.execute(sqlite_statement)
        return
    base, _, schema = url.partition("?schema=")
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(f'SET search_path TO "{schema}"')
        connection.execute(postgres_statement)  # type: ignore[arg-type]


def test_verify_names_the_first_tampered_position_with_its_exit_code(signed: dict) -> None:
    _tamper(
        signed["url"],
        "UPDATE stored_events SET topic = topic || 'x' WHERE rowid = 7",
        "UPDATE dspyledger_events SET topic = topic || 'x' WHERE notification_id = 7",
    )
    result = runner.invoke(app, ["verify", "--db", signed["url"], "--json"])
    assert result.exit_code == 10
    assert json.loads(result.stdout)["problem"]["position"] == 7


def test_export_bundle_selects_one_actor_and_bundle_remains_an_alias(
    signed: dict, tmp_path: Path
) -> None:
    with Ledger(signed["url"], actor="someone-else") as ledger:
        ledger.app.save_aggregates(
            Dataset.register(digest="other", example_digests=[], examples=[], actor="someone-else")
        )
    chosen = tmp_path / "chosen.zip"
    result = runner.invoke(
        app,
        ["export", "--bundle", str(chosen), "--db", signed["url"], "--actor", "someone-else"],
    )
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(chosen) as archive:
        lines = archive.read("events.jsonl").decode().splitlines()
    assert len(lines) == 1
    assert verify(chosen) == 0
    alias = tmp_path / "alias.zip"
    assert runner.invoke(app, ["bundle", str(alias), "--db", signed["url"]]).exit_code == 0
    assert verify(alias) == 0


def test_selection_options_without_bundle_are_one_clear_error(signed: dict) -> None:
    result = runner.invoke(app, ["export", "--db", signed["url"], "--actor", "auditor"])
    assert result.exit_code == 2
    assert "go with --bundle" in result.output


def test_verify_rechecks_every_recorded_checkpoint_signature(signed: dict) -> None:
    ok = runner.invoke(
        app, ["verify", "--db", signed["url"], "--public-key", str(signed["pub"]), "--json"]
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["signatures_checked"] == 2  # the checkpoint and the bundle's
    # Rewrite a recorded checkpoint's root: without the private key it cannot be re-signed.
    _tamper(
        signed["url"],
        "UPDATE stored_events SET state = CAST(replace(CAST(state AS TEXT),"
        " '\"root_hash\":\"', '\"root_hash\":\"0') AS BLOB) WHERE topic LIKE '%CheckpointRecorded'",
        "UPDATE dspyledger_events SET state = convert_to(replace(convert_from(state, 'UTF8'),"
        " '\"root_hash\":\"', '\"root_hash\":\"0'), 'UTF8') WHERE topic LIKE '%CheckpointRecorded'",
    )
    bad = runner.invoke(
        app, ["verify", "--db", signed["url"], "--public-key", str(signed["pub"]), "--json"]
    )
    assert bad.exit_code == 16, bad.output
    assert json.loads(bad.stdout)["problem"]["kind"] == "signature"
    # Without the key the rewritten root still disagrees with the recomputed tree.
    assert runner.invoke(app, ["verify", "--db", signed["url"]]).exit_code == 14
