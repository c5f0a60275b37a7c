"""Worker log formats: ``text`` (one readable line) or ``json`` (one JSON object per line).

Inside an activity kduflow logs through the SDK's ``activity.LoggerAdapter`` and inside a workflow
through ``workflow.logger``: the SDK puts the activity's or workflow's ids into the record
(``temporal_activity`` / ``temporal_workflow``), and the JSON format carries them as fields.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Record attributes the SDK's log adapters add, copied into the JSON object when present.
_CONTEXT_KEYS = ("temporal_activity", "temporal_workflow")


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message"}``, plus ``temporal_activity`` / ``temporal_workflow``
    (the SDK's ids of the activity or workflow that logged) and ``exception`` when present."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _CONTEXT_KEYS:
            value = getattr(record, key, None)
            if isinstance(value, dict):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    """Configure the root logger: ``fmt`` is "text" or "json" (ValueError otherwise)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
