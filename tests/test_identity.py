"""Path-safe ids, the roster, and the node identity check the ServerApp makes when a node joins."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fedcrm.errors import ConfigError, IdentityError
from fedcrm.identity import (
    REASON_INVALID_ID,
    REASON_NOT_ADMITTED,
    REASON_OTHER_NODE,
    REASON_UNKNOWN_BRANCH,
    BranchIdentity,
    Roster,
    RosterFile,
    SigningKey,
    check_node_identity,
    identity_refusal,
    load_roster,
    save_roster,
)
from fedcrm.ids import MAX_ID_LENGTH, check_id, id_path

OPENSSH = "ecdsa-sha2-nistp384 AAAA{}"


@pytest.mark.parametrize(
    "good", ["b1", "branch_007", "1997-01", "_x", "A-b_C", "x" * MAX_ID_LENGTH, "1234567890"]
)
def test_path_safe_ids_pass(good: str) -> None:
    assert check_id(good, "--branch-id") == good


@pytest.mark.parametrize(
    "bad",
    ["", "-rf", "../../escaped", "a/b", "a\\b", ".", "..", "a.b", "a b", "é", "b1\n",
     "x" * (MAX_ID_LENGTH + 1), "/etc"],
)  # fmt: skip
def test_anything_else_is_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"^--run-id .* is not a valid id"):
        check_id(bad, "--run-id")


def test_id_path_stays_in_its_folder(tmp_path: Path) -> None:
    assert id_path(tmp_path, "r7", "run id", prefix="model-", suffix=".npz") == (
        tmp_path / "model-r7.npz"
    )
    with pytest.raises(ConfigError, match="run id"):
        id_path(tmp_path, "../r7", "run id", prefix="model-", suffix=".npz")


def _identity(b: str, node_id: int | None, **kw: object) -> BranchIdentity:
    keys = (SigningKey(f"{b:0>16}"[-16:], f"PEM of {b}"),)
    return BranchIdentity(b, OPENSSH.format(b), keys, f"X25519 of {b}", node_id=node_id, **kw)  # type: ignore[arg-type]


@pytest.fixture
def roster() -> Roster:
    return Roster({"b1": _identity("b1", 11), "b2": _identity("b2", 22)})


def test_a_node_is_accepted_for_the_branch_it_is_registered_for(roster: Roster) -> None:
    assert check_node_identity(roster, "b1", 11) == "b1"
    assert identity_refusal(roster, "b2", 22) is None


@pytest.mark.parametrize(
    ("branch", "node", "reason", "text"),
    [
        ("b1", 22, REASON_OTHER_NODE, r"another node key \(it is registered for branch b2\)"),
        ("b9", 22, REASON_UNKNOWN_BRANCH, "not admitted"),
        ("../../escaped", 22, REASON_INVALID_ID, "not a valid id"),
        (None, 22, REASON_INVALID_ID, "not a valid id"),
    ],
)
def test_a_node_claiming_another_identity_is_refused_with_a_typed_reason(
    roster: Roster, branch: object, node: int, reason: str, text: str
) -> None:
    with pytest.raises(IdentityError, match=text) as exc:
        check_node_identity(roster, branch, node)
    assert exc.value.reason == reason
    assert identity_refusal(roster, branch, node) == str(exc.value)


def test_a_removed_branch_or_one_without_a_current_key_is_not_admitted(roster: Roster) -> None:
    removed = roster.with_branch(roster.branches["b1"].with_changes(status="removed"))
    with pytest.raises(IdentityError) as exc:
        check_node_identity(removed, "b1", 11)
    assert exc.value.reason == REASON_NOT_ADMITTED
    key = roster.branches["b2"].signing_keys[0]
    revoked = roster.with_branch(
        roster.branches["b2"].with_changes(
            signing_keys=(SigningKey(key.key_id, key.public_key, "revoked"),)
        )
    )
    assert identity_refusal(revoked, "b2", 22) is not None


def test_without_a_roster_only_the_form_is_checked() -> None:
    assert identity_refusal(None, "anything_goes", 5) is None
    assert identity_refusal(None, "../x", 5) is not None


def test_the_roster_round_trips_and_a_bad_id_in_it_is_refused(
    roster: Roster, tmp_path: Path
) -> None:
    path = save_roster(roster, tmp_path / "admitted.json")
    assert load_roster(path) == roster
    data = json.loads(path.read_text())
    data["branches"]["../../escaped"] = data["branches"].pop("b1")
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="not a fedcrm admitted list"):
        load_roster(path)


def test_the_roster_file_is_read_again_when_it_changes(roster: Roster, tmp_path: Path) -> None:
    path = save_roster(roster, tmp_path / "admitted.json")
    watched = RosterFile(path)
    assert watched.check("b1", 11) == "b1"
    # b1 rotated its node key and was registered again under a new node id.
    save_roster(roster.with_branch(roster.branches["b1"].with_changes(node_id=33)), path)
    os.utime(path, ns=(1, 1))  # a different stamp even on a coarse clock
    assert watched.check("b1", 33) == "b1"
    with pytest.raises(IdentityError):
        watched.check("b1", 11)


def test_a_deployment_without_an_admitted_list_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="server-dir"):
        RosterFile(tmp_path / "admitted.json")


def test_signing_keys_written_for_verifiers_leave_revoked_keys_out(tmp_path: Path) -> None:
    keys = (
        SigningKey("a" * 16, "-----A-----", "retired"),
        SigningKey("b" * 16, "-----B-----", "revoked"),
        SigningKey("c" * 16, "-----C-----"),
    )
    roster = Roster({"b1": BranchIdentity("b1", OPENSSH.format(1), keys, "x", node_id=1)})
    (written,) = roster.write_signing_keys(tmp_path)
    assert written == tmp_path / "b1.pub"
    assert written.read_text() == "-----A-----\n-----C-----\n"
