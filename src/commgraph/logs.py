"""How the node's log lines look: readable by default, or one JSON object a line.

``--log-format json`` is for Loki or Elastic: every record is an object with ``ts`` (epoch
seconds), ``level``, ``logger`` and ``message``; a record logged with
``extra={"fields": {...}}`` (alerts: ``kind, src, dst, relation, id``; decisions) carries
those keys too. Device-controlled text is a JSON string value like any other.
"""

from __future__ import annotations

import json
import logging
from typing import Any

__all__ = ["FORMATS", "JSONFormatter", "configure"]

FORMATS = ("text", "json")
_RESERVED = frozenset({"ts", "level", "logger", "message"})


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update({k: v for k, v in fields.items() if k not in _RESERVED})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure(fmt: str, level: int) -> None:
    """Log to standard error in ``fmt`` (one of :data:`FORMATS`) from ``level`` up."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
        )
    logging.basicConfig(level=level, handlers=[handler], force=True)
