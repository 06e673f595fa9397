"""Notify and personal data (SPEC §8), on the in-memory store: contact details arrive sealed and open
only with the member's data key; a sealed contact copied onto another member, or tampered with, does
not open (the event is poison, and the error names no detail); once the member is erased nothing of
them comes back and nothing goes to them."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from notify import domain
from notify.handlers import on_member_enrolled, on_member_erased, on_member_updated, on_tier_changed
from notify.store import store_key
from services.notify.tests.unit.memory_store import InMemoryStore
from shared.consumer import MemberOfAnotherChain
from shared.crypto import ContactDetails, new_data_key, seal_contact
from shared.events import Consents, MemberEnrolled, MemberErased, MemberUpdated, SealedContact, TierChanged
from shared.testing import FakeUnitOfWork, FixedClock, event, handle

EVENING = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
PHONE, NAME, EMAIL = "13800009999", "周女士", "zhou@example.com"


def unit(store: InMemoryStore) -> FakeUnitOfWork:
    uow = FakeUnitOfWork(clock=FixedClock(EVENING))
    uow.provide(store_key(), store)
    return uow


def enrolled(member_id: str, contact: SealedContact) -> MemberEnrolled:
    return MemberEnrolled(
        member_id=member_id,
        member_no="M000000007",
        home_clinic_id="sh-01",
        source="walk_in",
        birthday=date(1990, 2, 3),
        enrolled_at=EVENING,
        consents=Consents(sms=True, email=True),
        contact=contact,
    )


def tier_up(member_id: str) -> TierChanged:
    return TierChanged(
        from_tier="member",
        to_tier="silver",
        direction="up",
        reason="qualified",
        policy_version=1,
        effective_at=EVENING,
    )


async def test_a_sealed_enrolment_opens_with_the_members_data_key() -> None:
    key = new_data_key()
    sealed = seal_contact(key, ContactDetails(name=NAME, phone=PHONE, email=EMAIL), member_id="m1")
    assert PHONE not in sealed.model_dump_json() and NAME not in sealed.model_dump_json()
    store = InMemoryStore(data_keys={"m1": key})

    await handle(on_member_enrolled, event(enrolled("m1", sealed)), unit(store))

    contact = store.contact("m1")
    assert contact is not None and (contact.name, contact.phone, contact.email) == (NAME, PHONE, EMAIL)
    assert {n.channel for n in store.queued("m1", "welcome")} == {"webhook", "sms", "email"}


async def test_a_sealed_update_changes_the_name_and_email() -> None:
    key = new_data_key()
    store = InMemoryStore(data_keys={"m1": key})
    store.know("m1", domain.Contact(name=NAME, phone=PHONE, consents=domain.Consents(sms=True)))
    sealed = seal_contact(key, ContactDetails(name="吴女士", email="wu@example.com"), member_id="m1")

    await handle(
        on_member_updated, event(MemberUpdated(member_id="m1", updated_at=EVENING, contact=sealed)), unit(store)
    )

    contact = store.contact("m1")
    assert contact is not None and (contact.name, contact.phone, contact.email) == ("吴女士", PHONE, "wu@example.com")


async def test_a_sealed_contact_copied_onto_another_member_does_not_open() -> None:
    """The attack: take member A's sealed contact and publish it as member B's (whose key notify holds)."""
    key_a, key_b = new_data_key(), new_data_key()
    sealed_a = seal_contact(key_a, ContactDetails(name=NAME, phone=PHONE), member_id="a")
    # even with the same key, the member id is bound in: copying it onto b does not open
    store = InMemoryStore(data_keys={"b": key_b, "c": key_a})

    for victim in ("b", "c"):
        with pytest.raises(ValueError) as caught:
            await handle(on_member_enrolled, event(enrolled(victim, sealed_a)), unit(store))
        assert PHONE not in str(caught.value) and NAME not in str(caught.value)
        assert store.contact(victim) is None and not store.queued(victim)


async def test_a_tampered_sealed_contact_does_not_open() -> None:
    key = new_data_key()
    sealed = seal_contact(key, ContactDetails(name=NAME, phone=PHONE), member_id="m1")
    flipped = sealed.ciphertext[:-6] + ("A" if sealed.ciphertext[-6] != "A" else "B") + sealed.ciphertext[-5:]
    store = InMemoryStore(data_keys={"m1": key})

    for forged in (flipped, "not base64!", ""):
        with pytest.raises(ValueError):
            await handle(
                on_member_enrolled,
                event(enrolled("m1", SealedContact(key="member:m1", ciphertext=forged))),
                unit(store),
            )
    assert store.contact("m1") is None


async def test_an_erased_member_is_forgotten_and_told_nothing_more() -> None:
    key = new_data_key()
    sealed = seal_contact(key, ContactDetails(name=NAME, phone=PHONE, email=EMAIL), member_id="m1")
    store = InMemoryStore(data_keys={"m1": key})
    enrolment = event(enrolled("m1", sealed))
    await handle(on_member_enrolled, enrolment, unit(store))
    assert any(NAME in n.body for n in store.queued("m1"))

    # enrollment destroys the key in the erasure's transaction; then MemberErased arrives
    del store.data_keys["m1"]
    await handle(on_member_erased, event(MemberErased(member_id="m1", erased_at=EVENING)), unit(store))

    contact = store.contact("m1")
    assert contact == domain.Contact(erased=True)
    assert all(n.title == "" and n.body == "" and n.data == {} for n in store.queued("m1"))
    before = len(store.queued("m1"))
    # a later event queues nothing, on any channel (the chain's webhook included)
    await handle(on_tier_changed, event(tier_up("m1"), member_id="m1"), unit(store))
    # a redelivered enrolment brings nothing back and welcomes nobody
    await handle(on_member_enrolled, enrolment, unit(store))
    assert store.contact("m1") == domain.Contact(erased=True)
    assert len(store.queued("m1")) == before
    assert not domain.may_reach("webhook", contact) and not domain.may_reach("sms", contact)


async def test_an_enrolment_read_after_its_key_was_destroyed_yields_no_details() -> None:
    """Notify lagged behind: the member was erased before it read the enrolment. The sealed contact can
    no longer be opened by anyone, notify included; no error, no details."""
    sealed = seal_contact(new_data_key(), ContactDetails(name=NAME, phone=PHONE), member_id="m1")
    store = InMemoryStore()

    await handle(on_member_enrolled, event(enrolled("m1", sealed)), unit(store))

    contact = store.contact("m1")
    assert contact is not None and (contact.name, contact.phone, contact.email) == (None, None, None)
    assert {n.channel for n in store.queued("m1", "welcome")} == {"webhook"}


async def test_an_erasure_naming_another_chains_member_is_refused_and_changes_nothing() -> None:
    """The attack: chain-2 publishes MemberErased for chain-1's member."""
    store = InMemoryStore().know("m1", domain.Contact(name=NAME, phone=PHONE, consents=domain.Consents(sms=True)))
    with pytest.raises(MemberOfAnotherChain):
        await handle(
            on_member_erased, event(MemberErased(member_id="m1", erased_at=EVENING), chain_id="chain-2"), unit(store)
        )
    contact = store.contact("m1")
    assert contact is not None and contact.phone == PHONE and not contact.erased
