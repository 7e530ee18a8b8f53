"""Logging filters named in settings.LOGGING."""

import logging


class OneLineWarning(logging.Filter):
    """A record as one WARNING line, without its traceback. For Django's DisallowedHost, which logs an
    ERROR with a full traceback for every request with a bad Host header: anyone can send those, so
    each would cost the operator a traceback (and an alert) for nothing they can fix."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True
