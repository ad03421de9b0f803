"""Log lines of the gateway and the worker: ``key=value`` text, or one JSON object per line.

Every record carries ``request_id`` (the ``X-Request-ID`` of the request or job it belongs to,
``-`` when none): the gateway sets it per request, the worker per job. With
``XPLAIN_LOG_JSON=true`` lines are JSON objects (``python-json-logger``) with ``time``,
``level``, ``logger``, ``message`` and ``request_id``, for log pipelines that parse JSON.
"""

from __future__ import annotations

import contextvars
import logging
import sys

from pythonjsonlogger.json import JsonFormatter

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s request_id=%(request_id)s %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (the current request's or job's, else ``-``) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


def configure_logging(*, json_lines: bool = False, level: int = logging.INFO) -> None:
    """One handler on the root logger, on stderr, unless one is there already (a test run,
    uvicorn's ``--log-config``); the xplain loggers log at ``level``."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        if json_lines:
            handler.setFormatter(
                JsonFormatter(
                    JSON_FIELDS,
                    rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                )
            )
        else:
            handler.setFormatter(logging.Formatter(TEXT_FORMAT))
        handler.addFilter(RequestIdFilter())
        root.addHandler(handler)
    for name in ("xplain", "workers"):
        logging.getLogger(name).setLevel(level)
