"""Incremental Server-Sent Events parser, fed the raw chunks of a response as they pass.

Chunks may split an event, a line, a CRLF pair or a UTF-8 sequence anywhere; lines may end in
LF, CRLF or CR. The parser keeps only the unfinished tail, and caps it so that a stream
without line breaks cannot grow memory without bound (such an event is dropped, not the stream).
"""

from typing import NamedTuple

MAX_EVENT_BYTES = 8 * 1024 * 1024


class Event(NamedTuple):
    event: str | None  # the `event:` field, None when absent
    data: bytes        # `data:` lines joined with "\n"


class SSEParser:
    __slots__ = ("_tail", "_skip_lf", "_discard_line", "_event", "_data", "_size", "_overflow",
                 "dropped")

    def __init__(self) -> None:
        self._tail = b""          # an unfinished line
        self._skip_lf = False     # the last chunk ended in CR: a leading LF belongs to it
        self._discard_line = False  # inside an over-long line: skip to its end
        self._event: str | None = None
        self._data: list[bytes] = []
        self._size = 0
        self._overflow = False
        self.dropped = 0          # events dropped for exceeding MAX_EVENT_BYTES

    def idle(self) -> bool:
        """Between two events: nothing of an unfinished line or event is held."""
        return not (self._tail or self._data or self._skip_lf or self._discard_line
                    or self._event is not None or self._overflow)

    def feed(self, chunk: bytes) -> list[Event]:
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if self._discard_line:
            cut = min((i for i in (chunk.find(b"\n"), chunk.find(b"\r")) if i >= 0), default=-1)
            if cut < 0:
                return []
            self._discard_line = False
            chunk = chunk[cut:]
        if self._tail:
            chunk = self._tail + chunk
            self._tail = b""
        if not chunk:
            return []
        lines = chunk.splitlines(keepends=True)
        last = lines[-1]
        if last[-1:] not in (b"\n", b"\r"):
            lines.pop()
            if len(last) > MAX_EVENT_BYTES:
                self._overflow = self._discard_line = True
            else:
                self._tail = last
        elif last[-1:] == b"\r":
            self._skip_lf = True
        events: list[Event] = []
        for line in lines:
            line = line.rstrip(b"\r\n")
            if not line:
                self._dispatch(events)
            else:
                self._field(line)
        return events

    def _field(self, line: bytes) -> None:
        if line[:1] == b":":
            return  # comment
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._size += len(value)
            if self._size > MAX_EVENT_BYTES:
                self._overflow = True
                self._data.clear()
            elif not self._overflow:
                self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")

    def _dispatch(self, events: list[Event]) -> None:
        if self._overflow:
            self.dropped += 1
        elif self._data or self._event is not None:
            events.append(Event(self._event, b"\n".join(self._data)))
        self._event, self._data, self._size, self._overflow = None, [], 0, False
