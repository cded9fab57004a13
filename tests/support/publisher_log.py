"""The publisher's log records, captured for assertions (the Lambda's Powertools handler turns them into JSON lines)."""

from __future__ import annotations

import logging


class LogRecords(logging.Handler):
    """Collects the publisher's log records (the Lambda's Powertools handler turns them into JSON lines)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def causes(self) -> dict[str, str]:
        """queue label -> logged cause, from the "queue not read" warnings."""
        return {str(r.queue): str(r.cause) for r in self.records if hasattr(r, "queue") and hasattr(r, "cause")}

    def text(self) -> str:
        return "\n".join(f"{r.getMessage()} {getattr(r, 'queue', '')} {getattr(r, 'cause', '')}"
                         for r in self.records)
