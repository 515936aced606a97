"""Pages of a list without counting the whole result."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.db.models import QuerySet

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list, found without counting the whole result."""

    items: Sequence[T]
    number: int
    per_page: int
    has_next: bool

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def next_page_number(self) -> int:
        return self.number + 1

    @property
    def previous_page_number(self) -> int:
        return self.number - 1

    @property
    def start_index(self) -> int:
        return (self.number - 1) * self.per_page + 1 if self.items else 0

    @property
    def end_index(self) -> int:
        return (self.number - 1) * self.per_page + len(self.items)


def page_of(queryset: QuerySet[Any], *, number: int | str | None, per_page: int = 25) -> Page[Any]:
    """Page ``number`` (1-based; anything invalid is page 1) of ``queryset``, fetching one
    extra row to learn whether a next page exists instead of running COUNT(*), which on a
    large filtered set costs as much as the search itself."""
    try:
        page_number = max(1, int(number or 1))
    except (TypeError, ValueError):
        page_number = 1
    offset = (page_number - 1) * per_page
    rows = list(queryset[offset : offset + per_page + 1])
    return Page(
        items=rows[:per_page],
        number=page_number,
        per_page=per_page,
        has_next=len(rows) > per_page,
    )
