"""Deduplication: what an identifier means, and when two events have the same content.

Identifiers. Unique forever. An event whose identifier is already stored (or appeared
earlier in the same batch, where the first valid one wins) is a ``duplicate`` when its
content is the same, and a rejection with ``duplicate_meter_event_conflict`` otherwise.
SAME CONTENT means the same meter (event name), the same customer, the same value
(numerically: ``1.0`` equals ``1``) and the same timestamp (to the second) -- the timestamp
is not compared when the new event has none, so a retried "now" event is still a
duplicate. Other payload keys do NOT count: they are not metered. A rejected event claims no
identifier.

CANCELLED EVENTS. An event cancelled on its own (``meter_event_cancel``) keeps its identifier,
as on Stripe: sending it again is a duplicate (or a conflict) and does not revive it. A batch
cancelled whole (``event_batch_cancel``: the revert of an upload) RELEASES its events'
identifiers: a revert must never block a re-upload, so sending the same or a corrected file
afterwards counts each of its rows once again. A released event keeps the identifier it was
sent with in ``released_identifier``; its ``identifier`` becomes ``RELEASED_IDENTIFIER`` of
its id: 101 characters, longer than any valid identifier, so no event sent can equal it, the
unique constraint stays, and every lookup by identifier stays as it is. The revert also
deletes every ``StoredIdentifierSet`` (a set may hold a released identifier; which ones do is
not recorded), so the next import of each file looks its identifiers up once again.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from typing import Any

StoredRow = tuple[int, int, datetime, Decimal]  # meter_id, customer_id, timestamp, value

RELEASED_LENGTH = 101  # one more than rules.MAX_IDENTIFIER_LENGTH
# SQL (PostgreSQL and SQLite alike) for the placeholder of the released identifier of the
# event whose id is ``{id}``: "released:<id>:" padded with "~" to RELEASED_LENGTH characters.
RELEASED_PADDING = "~" * 91  # "released:" (9), the id (at most 19), ":" (1), at least 72
RELEASED_IDENTIFIER = (
    f"substr('released:' || {{id}} || ':' || '{RELEASED_PADDING}', 1, {RELEASED_LENGTH})"
)


def content_differences(
    mine: tuple[int, int, Any, Any], theirs: tuple[int, int, Any, Any], *, timestamps: bool = True
) -> list[str]:
    """What differs between two events' (meter id, customer id, timestamp, value): SAME
    CONTENT above. Values compare as numbers; ``timestamps=False`` leaves the timestamp out
    (an event sent without one)."""
    different = []
    if theirs[0] != mine[0]:
        different.append("event_name")
    if theirs[1] != mine[1]:
        different.append("customer")
    if timestamps and theirs[2] != mine[2]:
        different.append("timestamp")
    if Decimal(theirs[3]) != Decimal(mine[3]):
        different.append("value")
    return different


def conflict_message(identifier: str, differences: list[str], *, stored: bool) -> str:
    """The message of ``duplicate_meter_event_conflict``: with a stored event, or with an
    earlier event of the same batch."""
    fields = ", ".join(differences)
    if stored:
        return (
            f"An event already exists with identifier {identifier}, with a different {fields}. "
            "It was not changed."
        )
    return f"Identifier {identifier} was used earlier in this batch with a different {fields}."


def identifier_set_digest(identifiers: list[str]) -> str:
    """The identifiers in order (a chunk of the same file comes in the same order): the key
    of a ``StoredIdentifierSet``, whose events were all stored before."""
    return hashlib.blake2b("\n".join(identifiers).encode(), digest_size=32).hexdigest()


def content_set_digest(
    identifiers: list[str],
    meter_ids: list[int],
    customer_ids: list[int],
    timestamps: list[int],
    values: list[str],
) -> str:
    """For identifiers given by the source (which name no content): each identifier in order
    with its event's meter id, customer id, Unix seconds and value text, the content a
    stored event is compared by. Keyed apart from ``identifier_set_digest``'s sets."""
    lines = map(
        "{}\t{}\t{}\t{}\t{}".format, identifiers, meter_ids, customer_ids, timestamps, values
    )
    text = "\n".join(lines).encode()
    return hashlib.blake2b(text, digest_size=32, person=b"with-content").hexdigest()
