"""PriceTable: the prices a model is billed at, used to reprice recorded calls."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from ledger.domain.base import DomainRuleError, LedgerAggregate, provenance
from ledger.hashing import content_id


class PriceTable(LedgerAggregate):
    """One model's price history: each ``PriceSet`` applies from its ``effective_from``.

    There is one stream per model (its id is derived from the model name), so every
    process that prices a model appends to the same history.
    """

    class PriceTableCreated(LedgerAggregate.Created):
        """A model was priced for the first time."""

        model: str

    class PriceSet(LedgerAggregate.Event):
        """The model costs these amounts (USD per million tokens) from ``effective_from``."""

        model: str
        input_usd_per_1m: float
        output_usd_per_1m: float
        effective_from: datetime

        def apply(self, aggregate: PriceTable) -> None:
            """Count the price."""
            aggregate.prices_set += 1

    def __init__(self, model: str) -> None:
        self.model = model
        self.prices_set = 0

    @staticmethod
    def id_for(model: str) -> UUID:
        """Return the stream id of this model's price table."""
        return content_id("price-table", model)

    @classmethod
    def create(cls, *, model: str, actor: str) -> PriceTable:
        """Open the model's price table (``PriceTableCreated``)."""
        return cls._create(
            cls.PriceTableCreated,
            id=cls.id_for(model),
            model=model,
            **provenance(actor, None, None),
        )

    def set_price(
        self,
        *,
        input_usd_per_1m: float,
        output_usd_per_1m: float,
        effective_from: datetime,
        actor: str,
        trace_id: str | None = None,
        span_id: str | None = None,
    ) -> None:
        """Record a price (``PriceSet``); prices must be finite and not negative."""
        for name, value in (("input", input_usd_per_1m), ("output", output_usd_per_1m)):
            if not value >= 0 or value == float("inf"):
                msg = f"The {name} price must be a finite number of USD >= 0, not {value}."
                raise DomainRuleError(msg)
        if effective_from.tzinfo is None:
            msg = "effective_from must carry a time zone (e.g. 2025-01-01T00:00:00+00:00)."
            raise DomainRuleError(msg)
        fields: dict[str, Any] = {
            "model": self.model,
            "input_usd_per_1m": float(input_usd_per_1m),
            "output_usd_per_1m": float(output_usd_per_1m),
            "effective_from": effective_from,
        }
        self.record(self.PriceSet, None, **fields, **provenance(actor, trace_id, span_id))
