"""Reads for customers: the searchable list and the type-ahead."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from customers.models import Customer


def customer_list(*, search: str = "") -> QuerySet[Customer]:
    """Customers whose ID, name or email contains ``search`` (case-insensitive), by ID.

    On PostgreSQL, trigram indexes (migration 0002) serve these ``icontains`` filters, so
    the search stays quick with 100,000+ customers; pair it with ``page_of`` (no COUNT).
    """
    customers = Customer.objects.all()
    search = search.strip()
    if search:
        customers = customers.filter(
            Q(external_id__icontains=search)
            | Q(name__icontains=search)
            | Q(email__icontains=search)
        )
    return customers.order_by("external_id")


def customer_options(*, search: str, limit: int = 20) -> list[Customer]:
    """Customers for a type-ahead: external ID prefix first, then name or email matches."""
    search = search.strip()
    if not search:
        return []
    by_id = list(
        Customer.objects.filter(external_id__startswith=search).order_by("external_id")[:limit]
    )
    if len(by_id) < limit:
        seen = {c.pk for c in by_id}
        more = Customer.objects.filter(Q(name__icontains=search) | Q(email__icontains=search))
        by_id += [c for c in more.order_by("external_id")[: limit * 2] if c.pk not in seen]
    return by_id[:limit]
