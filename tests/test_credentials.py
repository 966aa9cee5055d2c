"""Keys from a Secret volume, rotation the way kubelet does it, and the auth helpers around them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from starlette.datastructures import Headers, QueryParams

from qwen_chat.auth.credentials import CredentialStore
from qwen_chat.auth.identity import (
    authenticate,
    encode_bearer_subprotocol,
    origin_allowed,
)
from qwen_chat.errors import Refusal
from tests.support.secret_volume import KEYS, SecretVolume


def test_reads_one_key_per_user_and_ignores_kubelet_entries(secret_volume: SecretVolume) -> None:
    store = CredentialStore(secret_volume.root)
    assert store.users == ["alice", "bob"]
    assert store.authenticate(KEYS["alice"]) == "alice"
    assert store.authenticate(KEYS["bob"]) == "bob"
    assert store.authenticate("nope") is None
    assert store.authenticate("") is None
    assert store.check("alice", KEYS["alice"])
    assert not store.check("alice", KEYS["bob"])
    assert not store.check("mallory", KEYS["alice"])


def test_rotation_by_symlink_swap_is_seen_without_restart(secret_volume: SecretVolume) -> None:
    store = CredentialStore(secret_volume.root, reload_seconds=0.05)
    secret_volume.write({"alice": "rotated-key", "carol": "carol-key"})
    time.sleep(0.1)
    assert store.authenticate("rotated-key") == "alice"
    assert store.authenticate(KEYS["alice"]) is None
    assert store.authenticate(KEYS["bob"]) is None, "a user removed from the Secret loses access"
    assert store.authenticate("carol-key") == "carol"


def test_reload_waits_for_the_interval(secret_volume: SecretVolume) -> None:
    store = CredentialStore(secret_volume.root, reload_seconds=3600)
    secret_volume.write({"alice": "rotated-key"})
    assert store.authenticate(KEYS["alice"]) == "alice"
    store.reload()
    assert store.authenticate("rotated-key") == "alice"


def test_missing_empty_and_unreadable_entries(tmp_path: Path) -> None:
    assert CredentialStore(tmp_path / "absent").users == []
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "empty").write_text("\n")
    (folder / "binary").write_bytes(b"\xff\xfe\x00")
    (folder / "ok").write_text("  spaced-key \n")
    (folder / "subdir").mkdir()
    store = CredentialStore(folder)
    assert store.users == ["ok"]
    assert store.authenticate("spaced-key") == "ok"
    if os.geteuid() != 0:  # root reads anything; elsewhere an unreadable file is skipped
        (folder / "ok").chmod(0)
        store.reload()
        assert store.users == []


def _auth(
    store: CredentialStore | None,
    headers: dict[str, str] | None = None,
    query: str = "",
    protocols: list[str] | None = None,
    allow_query: bool = False,
) -> str:
    return authenticate(store, Headers(headers or {}), QueryParams(query), protocols, allow_query).user


def test_authenticate_paths(secret_volume: SecretVolume) -> None:
    store = CredentialStore(secret_volume.root)
    assert _auth(store, {"authorization": f"Bearer {KEYS['bob']}"}) == "bob"
    assert _auth(store, {"authorization": f"bearer   {KEYS['bob']}  "}) == "bob"
    assert _auth(store, protocols=["qwen-chat.v1", encode_bearer_subprotocol(KEYS["alice"])]) == "alice"
    assert _auth(store, query=f"userid=alice&secret={KEYS['alice']}", allow_query=True) == "alice"
    assert _auth(None) == "anonymous"
    for kwargs in [
        {},
        {"headers": {"authorization": "Bearer wrong"}},
        {"headers": {"authorization": KEYS["alice"]}},
        {"protocols": ["qwen-chat.bearer.!!!not-base64"]},
        {"query": f"userid=alice&secret={KEYS['alice']}"},
        {"query": f"userid=bob&secret={KEYS['alice']}", "allow_query": True},
    ]:
        with pytest.raises(Refusal) as refused:
            _auth(store, **kwargs)  # type: ignore[arg-type]
        assert refused.value.status == 401
        assert KEYS["alice"] not in refused.value.message


def test_subprotocol_is_base64url_without_padding() -> None:
    encoded = encode_bearer_subprotocol("k?>")
    assert encoded == "qwen-chat.bearer.az8-"
    assert "=" not in encode_bearer_subprotocol("a")


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        (None, "svc:8000", [], True),
        ("http://svc:8000", "svc:8000", [], True),
        ("http://SVC:8000/", "svc:8000", [], True),
        ("http://evil:8000", "svc:8000", [], False),
        ("null", "svc:8000", [], False),
        ("https://chat.example.com", "svc:8000", ["https://chat.example.com"], True),
        ("http://svc:8000", "svc:8000", ["https://chat.example.com"], False),
        ("https://anything", "svc:8000", ["*"], True),
    ],
)
def test_origin_allowed(origin: str | None, host: str, allowed: list[str], ok: bool) -> None:
    assert origin_allowed(origin, host, allowed) is ok
