"""Accounts, organizations and tokens (gateway/accounts.py), on a real SQLite file, reopened where it
matters: who a token is, what its role lets it do with tokens and accounts, revocation, membership."""

from __future__ import annotations

import sqlite3
from types import SimpleNamespace

import pytest

from gateway.accounts import ADMIN_ACCOUNT, USAGE_WRITE_S, Accounts
from gateway.auth import Role
from tests.unit.fakes import ManualClock
from warmfleet.errors import AlreadyExists, InvalidInput, NotFound, PermissionDenied, Unauthenticated


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def opened(tmp_path, clock):
    """Open an ``Accounts`` on the same file (each call a new one, as a restarted gateway); all closed."""
    made: list[Accounts] = []

    async def open_(legacy=()) -> Accounts:
        accounts = Accounts(tmp_path / "accounts.sqlite3", clock)
        await accounts.open(legacy)
        made.append(accounts)
        return accounts

    yield open_
    for accounts in made:
        await accounts.close()


async def admin_of(accounts: Accounts):
    return accounts.authenticate("Bearer " + await accounts.bootstrap_admin())


def bearer(text: str) -> str:
    return f"Bearer {text}"


async def test_two_accounts_with_tokens_of_the_same_name_are_two_principals(opened):
    accounts = await opened()
    admin = await admin_of(accounts)
    alice, bob = [await accounts.create_account(admin, name) for name in ("alice", "bob")]
    _, alice_text = await accounts.create_token(admin, "alice", "laptop")
    _, bob_text = await accounts.create_token(admin, "bob", "laptop")

    as_alice, as_bob = accounts.authenticate(bearer(alice_text)), accounts.authenticate(bearer(bob_text))
    assert (as_alice.account, as_alice.name, as_alice.role) == (alice.id, "alice", Role.USER)
    assert (as_bob.account, as_bob.name) == (bob.id, "bob") and alice.id != bob.id
    assert as_alice.owns(alice.id) and not as_alice.owns(bob.id) and admin.owns(bob.id)


async def test_names_are_unique_whatever_their_case_and_follow_the_rule(opened):
    accounts = await opened()
    admin = await admin_of(accounts)
    await accounts.create_account(admin, "Alice")
    with pytest.raises(AlreadyExists, match="'Alice'"):
        await accounts.create_account(admin, "alice")
    for bad in ("", "no spaces", "-dash-first", "x" * 65, "ünï"):
        with pytest.raises(InvalidInput) as err:
            await accounts.create_account(admin, bad)
        assert err.value.field == "name"
    with pytest.raises(InvalidInput, match="kind"):
        await accounts.create_account(admin, "carol", "team")


async def test_a_revoked_token_is_refused_at_once_and_after_a_restart(opened):
    accounts = await opened()
    admin = await admin_of(accounts)
    await accounts.create_account(admin, "alice")
    info, text = await accounts.create_token(admin, "alice", "ci")
    alice = accounts.authenticate(bearer(text))

    revoked = await accounts.revoke_token(alice, info.id)  # a user revokes its own token
    assert revoked.revoked_at is not None
    with pytest.raises(Unauthenticated, match=f"{info.id} .* was revoked"):
        accounts.authenticate(bearer(text))
    reopened = await opened()
    with pytest.raises(Unauthenticated, match="was revoked"):
        reopened.authenticate(bearer(text))
    with pytest.raises(Unauthenticated, match="unknown token"):
        reopened.authenticate(bearer("wf_never-made"))


async def test_a_user_manages_only_its_own_tokens_within_its_role(opened):
    accounts = await opened()
    admin = await admin_of(accounts)
    for name in ("alice", "bob"):
        await accounts.create_account(admin, name)
    _, alice_text = await accounts.create_token(admin, "alice", "first")
    bob_info, _ = await accounts.create_token(admin, "bob", "first")
    alice = accounts.authenticate(bearer(alice_text))

    mine, _ = await accounts.create_token(alice, "alice", "second")
    assert [t.name for t in accounts.tokens(alice)] == ["first", "second"]
    assert {t.account for t in accounts.tokens(alice)} == {alice.account}
    with pytest.raises(PermissionDenied, match="a user token cannot create a admin token"):
        await accounts.create_token(alice, "alice", "root", "admin")
    with pytest.raises(NotFound):  # bob's account, as if it did not exist
        await accounts.create_token(alice, "bob", "sneaky")
    with pytest.raises(NotFound):
        accounts.tokens(alice, "bob")
    with pytest.raises(NotFound):
        await accounts.revoke_token(alice, bob_info.id)
    with pytest.raises(PermissionDenied):
        await accounts.create_account(alice, "mallory")
    assert {t.id for t in accounts.tokens(admin)} >= {mine.id, bob_info.id}  # an admin sees every token
    assert [t.id for t in accounts.tokens(admin, "bob")] == [bob_info.id]


async def test_members_of_an_organization_share_its_namespace(opened):
    accounts = await opened()
    admin = await admin_of(accounts)
    await accounts.create_account(admin, "acme", "organization")
    for name in ("alice", "bob"):
        await accounts.create_account(admin, name)
    _, alice_text = await accounts.create_token(admin, "alice", "t")
    _, bob_text = await accounts.create_token(admin, "bob", "t")
    await accounts.set_member(admin, "acme", "alice", True)

    alice, bob = accounts.authenticate(bearer(alice_text)), accounts.authenticate(bearer(bob_text))
    private = SimpleNamespace(owner="acme", visibility="private")
    assert alice.organizations == {"acme"} and alice.may_see(private) and alice.may_write("acme")
    assert not bob.may_see(private) and not bob.may_write("acme") and bob.may_write("bob")
    assert bob.may_see(SimpleNamespace(owner="acme", visibility="public"))
    assert [m.name for m in accounts.members(alice, "acme")] == ["alice"]
    with pytest.raises(NotFound):
        accounts.members(bob, "acme")
    with pytest.raises(InvalidInput, match="tokens belong to its members"):
        await accounts.create_token(admin, "acme", "t")
    with pytest.raises(InvalidInput, match="is a user account"):
        await accounts.set_member(admin, "bob", "alice", True)

    assert (await opened()).authenticate(bearer(alice_text)).organizations == {"acme"}  # kept on disk
    await accounts.set_member(admin, "acme", "alice", False)
    assert accounts.authenticate(bearer(alice_text)).organizations == frozenset()  # at once
    assert (await opened()).authenticate(bearer(alice_text)).organizations == frozenset()


async def test_last_used_is_kept_in_memory_and_on_disk_at_close(opened, clock, tmp_path):
    accounts = await opened()
    admin = await admin_of(accounts)
    await accounts.create_account(admin, "alice")
    info, text = await accounts.create_token(admin, "alice", "t")
    assert info.last_used_at is None
    clock.now += 5
    accounts.authenticate(bearer(text))
    clock.now += USAGE_WRITE_S / 2  # within the write interval: in memory only, until close
    accounts.authenticate(bearer(text))
    [seen] = accounts.tokens(admin, "alice")
    assert seen.last_used_at == clock.now
    await accounts.close()
    with sqlite3.connect(tmp_path / "accounts.sqlite3") as db:
        assert db.execute("SELECT last_used_at FROM tokens WHERE id = ?", (info.id,)).fetchone() == (clock.now,)


async def test_a_home_from_before_accounts_keeps_its_tokens(opened):
    from gateway.auth import hash_token

    legacy = [(hash_token("wf_old-admin"), "admin", "admin"), (hash_token("wf_old-alice"), "alice", "user")]
    accounts = await opened(legacy)
    old_admin, old_alice = [accounts.authenticate(bearer(t)) for t in ("wf_old-admin", "wf_old-alice")]
    assert (old_admin.name, old_admin.role) == (ADMIN_ACCOUNT, Role.ADMIN) and accounts.has_admin()
    assert (old_alice.name, old_alice.role) == ("alice", Role.USER)
    again = await opened(legacy)  # taken up once: a second open adds nothing
    assert len(again.tokens(old_admin)) == 2


async def test_a_signed_link_acts_as_the_owner_as_a_plain_user(opened):
    accounts = await opened()
    admin = await admin_of(accounts)
    alice = await accounts.create_account(admin, "alice")
    link = accounts.link_principal(alice.id)
    assert (link.account, link.name, link.role, link.token_id) == (alice.id, "alice", Role.USER, "")
    with pytest.raises(NotFound):
        accounts.link_principal("acct_gone")
