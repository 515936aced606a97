"""The ingestion core: the one way usage events enter the system.

Every source (manual form, CSV upload, HTTP API, S3) builds ``EventInput`` objects and calls
``meter_events_ingest``. It validates each event with Stripe's error codes, deduplicates by
identifier (forever, not just 24 hours), writes accepted events and their hourly rollups in
one transaction, records rejections, and returns one ``EventResult`` per input, in order.

INTERFACE CONTRACT (implemented by the ingestion-core work; other modules code against it):

    batch = event_batch_create(source=EventBatch.Source.CSV, user=user, dry_run=False)
    report = meter_events_ingest(events=[EventInput(...), ...], batch=batch)
    report.results[i].outcome in {Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.REJECTED}
    report.accepted / report.duplicates / report.rejected  -> int counts
    report.totals_by_meter -> {meter_pk: MeterTotal(event_count, value_sum)} of accepted events
    meter_event_cancel(event=..., user=...)
    event_batch_cancel(batch=..., user=...) -> number of events cancelled
    event_rejections_record(batch=..., rejections=[RejectionInput(...)])  # a source's own
        parse failures (bad timestamp format...), stored like the core's rejections

Other code imports only from this package. DECISIONS, each beside the code it describes:

- ``types``: the public types above.
- ``rules``: validation (the order of checks), values, timestamps and the accepted window;
  the one ``validate`` every path uses, and the limits.
- ``dedup``: identifiers and SAME CONTENT (duplicate or conflict).
- ``lookups``: meters, customers and stored events read for validation and deduplication.
- ``pipeline``: ``meter_events_ingest`` and ``meter_events_ingest_columns``; dry runs.
- ``columns``: which rows of a file chunk are accepted column by column.
- ``postgres`` and ``sqlite``: the stores; receipt order and concurrency.
- ``rollups``: hourly rollups, supersession of windowed meters, the "last" event.
- ``cancellation``: cancelling events and batches; the audit trail.
- ``batches`` and ``manual``: batches and their rejections; manual entry.
- ``precheck``: one event checked ahead of storage against its cached meter, its customer
  left to the caller's statement (the API's creates, which keep the event in an inbox
  drained through ``meter_events_ingest``).
"""

from __future__ import annotations

from events.ingestion.batches import event_batch_create, event_rejections_record
from events.ingestion.cancellation import event_batch_cancel, meter_event_cancel
from events.ingestion.manual import manual_event_record
from events.ingestion.pipeline import gc_paused, meter_events_ingest, meter_events_ingest_columns
from events.ingestion.precheck import meter_event_precheck, precheck_caches_clear
from events.ingestion.rules import new_identifier, value_parse
from events.ingestion.types import (
    Code,
    EventCancelError,
    EventColumns,
    EventInput,
    EventResult,
    IngestCounts,
    IngestReport,
    ManualEntryResult,
    MeterTotal,
    Outcome,
    RejectionInput,
)

__all__ = [
    "Code",
    "EventCancelError",
    "EventColumns",
    "EventInput",
    "EventResult",
    "IngestCounts",
    "IngestReport",
    "ManualEntryResult",
    "MeterTotal",
    "Outcome",
    "RejectionInput",
    "event_batch_cancel",
    "event_batch_create",
    "event_rejections_record",
    "gc_paused",
    "manual_event_record",
    "meter_event_cancel",
    "meter_event_precheck",
    "meter_events_ingest",
    "meter_events_ingest_columns",
    "new_identifier",
    "precheck_caches_clear",
    "value_parse",
]
