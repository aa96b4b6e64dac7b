"""Wait for a log record instead of polling state: ``async with LogWatch("text") as seen``."""

from __future__ import annotations

import asyncio
import logging


class LogWatch(logging.Handler):
    """An event set when the ``hutch`` logger emits a record containing ``text``."""

    def __init__(self, text: str, logger: str = "hutch") -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.logger = logging.getLogger(logger)
        self.event = asyncio.Event()
        self.count = 0
        self._level = self.logger.level

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.count += 1
            self.event.set()

    async def wait(self, timeout: float = 10) -> None:
        await asyncio.wait_for(self.event.wait(), timeout)

    async def __aenter__(self) -> LogWatch:
        self.logger.addHandler(self)
        if self.logger.getEffectiveLevel() > logging.DEBUG:
            self.logger.setLevel(logging.DEBUG)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._level)
