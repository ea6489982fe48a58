"""HTTP/1.1 connection, sans-IO, on httptools (llhttp in strict mode).

Bytes in, events out (:meth:`H1Connection.receive_data`); the response side turns a status, headers and body
pieces into the bytes to write (:meth:`start_response`, :meth:`send_body`, :meth:`informational`).  No socket, no
clock, no asyncio: the caller writes the returned bytes and owns every deadline.

Rules this file enforces (RFC 9112):

- a request head is delivered only once complete; its header names are lower-cased, order and duplicates kept,
  values without surrounding whitespace;
- HTTP/1.1 requests must carry exactly one ``Host`` (§3.2); several or none → 400;
- HTTP/1.x with a minor version above 1 is handled as HTTP/1.1 (RFC 9110 §2.5); another major version → 505;
- anything the parser rejects → a :class:`RequestError` event with the status to answer (400, 501 for a
  well-formed method the parser cannot carry, 505 for a version we do not speak), after which the connection
  delivers nothing more;
- chunked trailers are parsed and dropped: they never reach the request's headers;
- limits (:class:`RequestLimits`): a request target longer than ``line`` → 414; a header section larger than
  ``fields`` bytes, or with more than ``field_count`` fields → 431, found while the head is still coming (a head
  that never ends is refused within one read of the limit); a ``Content-Length`` over ``body`` → 413 before any of
  the body; in a chunked body, more than ``fields`` bytes that carry no data (chunk extensions, the trailer
  section, beyond a chunk's size line and line ends) → 400 (whatever the reads, within one read of the limit);
  between requests, more than ``fields`` bytes that make no event → 431;
- a read larger than 64 KiB is parsed a slice at a time, and once ``pipeline`` requests came out of it the rest
  waits unparsed (:attr:`H1Connection.held`): a flood of pipelined requests is parsed only so far ahead;
- ``CONNECT`` (a tunnel: this is not a proxy) → 400, and nothing after it is parsed; the ``*`` target only with
  ``OPTIONS`` (§3.2.4); a ``Host`` that is not ``host[:port]`` → 400;
- transfer codings (§6.1): ``chunked`` must be the last and only once (else 400); another coding before it → 501
  (none is implemented); ``Transfer-Encoding`` in an HTTP/1.0 request → 400;
- field values may hold obs-text (0x80-0xFF): passed on as opaque bytes, never taken for a line break;
- responses: the app's ``content-length`` is respected and checked; without one, a body sent in one piece gets a
  ``content-length``, a streamed body is chunked for HTTP/1.1 and close-delimited for HTTP/1.0; HEAD, 1xx, 204 and
  304 carry no body (a ``content-length`` on a 204 is left out); header names must be tokens and values free of
  control characters but HTAB (RFC 9110 §5.5; CR, LF and NUL above all) (else :class:`ProtocolError`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any, Final

import httptools

from .events import (
    Data,
    EndOfMessage,
    Event,
    Headers,
    Preface,
    ProtocolError,
    Request,
    RequestError,
    Upgrade,
)

__all__ = ["H1Connection", "ResponseDefaults", "status_line", "switching_protocols"]

#: bytes from the peer: a read, or a slice of one (:meth:`H1Connection._receive_sliced` feeds memoryview slices)
Received = bytes | memoryview

_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_RUN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*")
# A method token longer than this, unknown to the parser, is answered 501 without waiting for its end (RFC 9112
# §3: "longer than any that it implements"); the parser's longest method has 11 characters.
_METHOD_MAX: Final = 32

# Above this size a body piece is handed over as its own buffer rather than copied behind the head.
_COPY_LIMIT: Final = 16384


def status_line(status: int, version: bytes = b"1.1") -> bytes:
    try:
        phrase = HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        phrase = b""
    return b"HTTP/" + version + b" %d " % status + phrase + b"\r\n"


_STATUS_LINES: Final = {s.value: status_line(s.value) for s in HTTPStatus}
_STATUS_LINES_10: Final = {s.value: status_line(s.value, b"1.0") for s in HTTPStatus}

# Response header names that change how we frame the response, or replace one of our defaults.
_CONTENT_LENGTH: Final = b"content-length"
_SPECIAL_RESPONSE: Final = frozenset({_CONTENT_LENGTH, b"transfer-encoding", b"connection", b"date", b"server",
                                      b"alt-svc"})
# Header names and values already checked (apps reuse a handful of them); bounded.  A name is kept with its
# lowercase form: an app sends the same name objects response after response, so their hash is cached and a
# known name costs one lookup, no lower() and no hash of a new lowercase copy.
_known_names: Final[dict[bytes, bytes]] = {}
_known_values: Final[set[bytes]] = set()
_KNOWN_MAX: Final = 4096
# content-length values already parsed (an app that sends the same body sends the same value object); bounded
_known_lengths: Final[dict[bytes, int]] = {}
_KNOWN_LENGTHS_MAX: Final = 256
# Whole lines of the fields an app sends again and again, by their (name, value) pair, checked: one lookup, and one
# piece of the head to join.  Only fields that change nothing of ours (not in _SPECIAL_RESPONSE); bounded.
_known_lines: Final[dict[tuple[bytes, bytes], bytes]] = {}
_KNOWN_LINES_MAX: Final = 1024
# The same for content-length fields: the line and the length it says; bounded as _known_lengths
_known_length_lines: Final[dict[tuple[bytes, bytes], tuple[bytes, int]]] = {}

# Request header names as they came → lower-cased.  Names are new objects on every request, but most are one of a
# few dozen spellings: one lookup (one hash of the name) instead of lower() and a hash of its copy, and the names
# the scope carries, and the watched-name test below, are then objects whose hash is cached.  Bounded in count and
# in each name's length: names past either are lowered each time.  Apart from _known_names on purpose: clients
# choose these names, and a client filling that map would leave every app's response names to lower() and the
# token check again.
_request_names: Final[dict[bytes, bytes]] = {}
_REQUEST_NAMES_MAX: Final = 1024
_REQUEST_NAME_KEPT: Final = 64

_WATCHED_REQUEST: Final = frozenset({b"host", b"content-length", b"transfer-encoding", b"expect", b"te", b"forwarded",
                                     b"x-forwarded-for", b"x-forwarded-proto"})
# A Host value (RFC 9110 §7.2): uri-host [":" port], uri-host an IP literal or a reg-name (RFC 3986 §3.2.2).
_HOST: Final = re.compile(rb"(?:\[[0-9A-Za-z:.\-_~!$&'()*+,;=%]*\]|[0-9A-Za-z.\-_~!$&'()*+,;=%]*)(?::[0-9]*)?")
_valid_hosts: Final[set[bytes]] = set()
# Bytes a field value must not hold (RFC 9110 §5.5: no control character but HTAB).
_BAD_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# An absolute-form target (RFC 9112 §3.2.2): a scheme, "://", then its authority.
_ABSOLUTE_FORM: Final = re.compile(rb"[^:/?#]+://([^/?#]*)")
# How an HTTP/1 request line ends.
_REQUEST_LINE_END: Final = re.compile(rb" HTTP/\d\.\d\r?\n")
# The room a request line takes besides its target (method, spaces, version, CRLF).
_LINE_EXTRA: Final = 64

# Response states
_IDLE: Final = 0
_HEAD_PENDING: Final = 1
_SENDING: Final = 2
_DONE: Final = 3
# Body framing
_UNDECIDED: Final = 0
_LENGTH: Final = 1
_CHUNKED: Final = 2
_CLOSE_DELIMITED: Final = 3
_NO_BODY: Final = 4
_HEAD_ONLY: Final = 5


class ResponseDefaults:
    """Default response header lines, shared by every connection of a server and refreshed by its clock.
    ``alt_svc`` (``--http3``: where HTTP/3 is served) is added unless the response has its own ``alt-svc``."""

    __slots__ = ("alt_svc", "date", "extra", "server", "together")

    def __init__(self, server: bytes = b"", date: bytes = b"", extra: bytes = b"", alt_svc: bytes = b"") -> None:
        self.server = server
        self.extra = extra
        self.date = date
        self.alt_svc = alt_svc
        self.together = server + date + extra + alt_svc

    def set_date(self, date: bytes) -> None:
        self.date = date
        self.together = self.server + date + self.extra + self.alt_svc

    def set_alt_svc(self, line: bytes) -> None:
        self.alt_svc = line
        self.together = self.server + self.date + self.extra + line


class RequestLimits:
    """Sizes a request head and body may have (bytes), and how many header fields; ``body`` 0: no limit."""

    __slots__ = ("body", "field", "field_count", "fields", "line", "pipeline")

    def __init__(self, line: int = 8192, fields: int = 65536, field_count: int = 100, body: int = 1024 ** 3,
                 pipeline: int = 16, field: int = 0) -> None:
        #: longest request target (414 past it)
        self.line = line
        #: largest header section: names, values, ": " and CRLF of each field (431 past it)
        self.fields = fields
        #: most header fields (431 past it)
        self.field_count = field_count
        #: largest request body (413 past it), 0 for none
        self.body = body
        #: requests parsed ahead of the one being answered, after which a large read is not parsed further (at most
        #: one slice of _SLICE bytes holds more)
        self.pipeline = pipeline
        #: largest header field, name and value (431 past it), 0 for none but the section's
        self.field = field


_DEFAULT_LIMITS: Final = RequestLimits()
_NO_BODY_LIMIT: Final = 1 << 62
# Reads larger than this are parsed in slices (see H1Connection._receive_sliced): of this size within a body, and of
# _HEAD_SLICE where requests may begin, so that a flood of small pipelined requests is parsed only a few dozen
# requests past the pipeline depth.
_SLICE: Final = 65536
_HEAD_SLICE: Final = 1024
#: body pieces shorter than this that follow each other in a read are joined into one Data event (see on_body)
_SMALL_BODY: Final = 1024

#: every request's end: an HTTP/1.1 connection's events carry nothing else (stream 0), so one serves them all
_END: Final = EndOfMessage()

# The parser's methods, called unbound (``_feed_data(parser, data)``): the compiled build then calls each without
# first looking it up by name on the parser (a Cython class, unknown to the compiler), on every request.
_feed_data: Final = httptools.HttpRequestParser.feed_data
_get_http_version: Final = httptools.HttpRequestParser.get_http_version
_get_method: Final = httptools.HttpRequestParser.get_method
_should_upgrade: Final = httptools.HttpRequestParser.should_upgrade
_should_keep_alive: Final = httptools.HttpRequestParser.should_keep_alive
# The framing a chunk may take besides its extensions: 16 hex digits of size and two line ends.
_CHUNK_FRAMING: Final = 20


def switching_protocols(status: int, headers: list[tuple[bytes, bytes]], defaults: ResponseDefaults) -> bytes:
    """The head that accepts a WebSocket handshake (101), with the server's default fields the app did not set."""
    has_server = has_date = False
    parts = [status_line(status)]
    for name, value in headers:
        lname = name.lower()
        if lname == b"server":
            has_server = True
        elif lname == b"date":
            has_date = True
        parts += (name, b": ", value, b"\r\n")
    if not has_server:
        parts.append(defaults.server)
    if not has_date:
        parts.append(defaults.date)
    parts.append(defaults.extra)
    parts.append(b"\r\n")
    return b"".join(parts)


def _discard(data: bytes) -> None:
    pass


class _ParseAbort(Exception):
    def __init__(self, error: RequestError) -> None:
        self.error = error


# Stands for the header list between heads: header lines parsed after the head (chunked trailers) are not kept.
_TRAILERS: Final[Headers] = []
# Stands for the events of an earlier read, and how many events of a read may stay referenced until the next one
# (see H1Connection._feed).
_EARLIER: Final[list[Event]] = []
_KEPT_EVENTS: Final = 64


def _section_size(headers: Headers) -> int:
    """The bytes a header section takes: each field's name and value, ": " and CRLF (as --limit-request-headers
    counts them)."""
    return sum(len(name) + len(value) for name, value in headers) + 4 * len(headers)


def _known_method(token: bytes) -> bool:
    """Whether the parser carries ``token`` as an HTTP method (error path only)."""
    parser = httptools.HttpRequestParser(object())
    try:
        parser.feed_data(token + b" / HTTP/1.1\r\n")
    except httptools.HttpParserError:
        return False
    return True


class H1Connection:
    """One HTTP/1.1 connection's wire state: parses requests, frames responses."""

    # deleted by release() (mypyc allows it for what is listed here): a use after that raises AttributeError
    __deletable__ = ("_parser",)

    __slots__ = (
        "_begun",
        "_body_digits",
        "_carried",
        "_checking",
        "_chunked",
        "_chunked_ok",
        "_chunks",
        "_defaults",
        "_events",
        "_expect",
        "_extra",
        "_framing",
        "_head",
        "_headers",
        "_held",
        "_hosts",
        "_inside",
        "_limits",
        "_line_read",
        "_max_body",
        "_max_field_size",
        "_max_fields",
        "_max_line",
        "_max_section",
        "_parser",
        "_probe",
        "_probe_first_line",
        "_quiet",
        "_remaining",
        "_response_keep_alive",
        "_slow",
        "_state",
        "_te_other",
        "_te_trailers",
        "_url",
        "_version10",
        "broken",
        "forwarded",
        "keep_alive",
        "requested",
        "write",
    )

    def __init__(self, defaults: ResponseDefaults | None = None,
                 write: Callable[[bytes], object] | None = None, limits: RequestLimits | None = None) -> None:
        #: where response bytes go (the driver sets its transport's ``write``)
        self.write: Callable[[bytes], object] = write if write is not None else _discard
        self._parser = httptools.HttpRequestParser(self)
        # Any HTTP/d.d reaches on_headers_complete, which decides (1.x → handled, other majors → 505).
        self._parser.set_dangerous_leniencies(lenient_version=True)
        self._defaults = defaults if defaults is not None else ResponseDefaults()
        self._events: list[Event] = _EARLIER
        #: the list of events of the read in which the head being received began (_EARLIER: an earlier read)
        self._begun: list[Event] = _EARLIER
        self._probe: bytes | None = None
        self._probe_first_line = True
        self._url = b""
        #: b"": the next read begins a request; while such a read is parsed, the read (the first request's line
        #: is at its start: see on_headers_complete); None otherwise
        self._line_read: bytes | None = b""
        # _TRAILERS between heads, the head's own list while one is being parsed (see in_head)
        self._headers: Headers = _TRAILERS
        self._hosts = 0
        limits = limits if limits is not None else _DEFAULT_LIMITS
        self._limits = limits
        self._max_fields = limits.field_count
        self._max_field_size = limits.field
        self._max_body = limits.body or _NO_BODY_LIMIT
        self._max_line = limits.line
        #: the header section's limit; a read no longer than it cannot hold a section over it (the target's limit
        #: is checked in on_url)
        self._max_section = limits.fields
        # a Content-Length with fewer digits than this is under the body limit
        self._body_digits = len(str(self._max_body))
        #: bytes of the head being received, from earlier reads (0: none, or it began in this read)
        self._carried = 0
        #: bytes received between requests that made no event
        self._quiet = 0
        #: chunk size lines parsed in this read; whether the request in progress has a chunked body; whether the
        #: read being parsed began inside such a body; the bytes of that body that carried no data beyond its
        #: chunks' framing (extensions, trailers; see _framing_read)
        self._chunks = 0
        self._chunked = False
        self._inside = False
        self._extra = 0
        #: any of _carried, _quiet, _held is set: the next read takes the checked path
        self._slow = False
        #: 2 while a read may complete a head over the header section's limit (a read longer than it, or a head
        #: spread over reads): on_headers_complete sums the section then (1: a checked read that cannot)
        self._checking = 0
        self._te_other = False
        #: bytes received and not parsed yet: as many requests as may be queued are waiting (see _receive_sliced)
        self._held = b""
        self._expect = False
        self._te_trailers = False
        self._state = _IDLE
        self._head = b""
        self._framing = _LENGTH
        self._remaining = 0
        self._version10 = False
        self._chunked_ok = True
        self._response_keep_alive = True
        #: False once the connection must close after the response in progress.
        self.keep_alive = True
        #: True once the peer sent something unparseable: nothing more will be delivered.
        self.broken = False
        #: a request head came on this connection (a first line that is not HTTP/1 is then no HTTP/2 preface)
        self.requested = False
        #: set when a request carries a proxy's forwarding fields (X-Forwarded-For/-Proto, Forwarded); the driver
        #: clears it (see runtime.context.forwarded_hint)
        self.forwarded = False

    # ------------------------------------------------------------------ inbound

    def receive_data(self, data: Received) -> list[Event]:
        """Feed bytes from the peer; return the events they complete (possibly several pipelined requests)."""
        if self.broken:
            probe = self._probe
            if probe is None:
                return []
            self._probe = None
            verdict = self._method_verdict(probe + data, self._probe_first_line)
            return [verdict] if verdict is not None else []
        if len(data) > self._max_section or self._slow:
            return self._receive_checked(data)
        return self._feed(data)

    def _feed(self, data: Received) -> list[Event]:
        """Parse ``data``; the events it completes."""
        events: list[Event] = []
        self._events = events
        if self._line_read is not None:  # this read begins with a request (or blank lines before one)
            self._line_read = data if type(data) is bytes else None
        try:
            _feed_data(self._parser, data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(exc, data, events)
        except httptools.HttpParserError as exc:
            self._failed(exc, data, events)
        else:
            if self._inside or self._chunked or self._chunks:
                self._framing_read(data, events)
            # a read that completed requests and ended between them left nothing pending
            if (not events or self._headers is not _TRAILERS or self._checking) and not self.broken:
                self._after_read(data, events)
        if self._line_read is data:
            self._line_read = None  # its first request's head did not end in it
        if len(events) > _KEPT_EVENTS:
            # a read of tiny pieces makes thousands of events: none is kept here once they are the caller's (a head
            # begun in this read began in an earlier one for the next).  A usual read's list stays until the next
            # read: freed at once, its body pieces would make the allocator give memory back and take it again on
            # every request (glibc's heap trimming: a fifth of the throughput of 16 KiB uploads).
            self._events = self._begun = _EARLIER
        return events

    def _framing_read(self, data: Received, events: list[Event]) -> None:
        """Bound the bytes of a chunked body that carry no data (RFC 9112 §7.1.1: chunk extensions, and the
        trailer section) by the header section's limit.  The parser gives no offsets: a read that began inside the
        body is accounted whole, less what it is known to hold (the data, each chunk's framing, the heads of the
        requests after it), so that the rest is what the body spent on extensions and trailers."""
        chunks = self._chunks
        self._chunks = 0
        if self._inside:
            extra = self._extra + len(data) - _CHUNK_FRAMING * chunks
            ended = False
            for event in events:
                if isinstance(event, Data):
                    extra -= len(event.data)
                elif isinstance(event, Request):
                    extra -= len(event.target) + _LINE_EXTRA + _section_size(event.headers)
                elif isinstance(event, EndOfMessage):
                    ended = True
            headers = self._headers
            if headers is not _TRAILERS:  # the head of a request after it, begun in this read
                extra -= len(self._url) + _section_size(headers)
            if extra > self._max_section:
                self.broken = True
                events.append(RequestError(400, "chunk extensions or trailer section larger than the limit"))
                return
            self._extra = 0 if ended or extra < 0 else extra
        self._inside = self._chunked

    def _receive_checked(self, data: Received) -> list[Event]:
        """:meth:`receive_data` for a read that may hold a head over a limit, or after one that left something
        pending (part of a head, bytes held back, bytes that made no event)."""
        if len(data) > _SLICE or self._held:
            return self._receive_sliced(data)
        self._checking = 2 if self._carried or len(data) > self._max_section else 1
        try:
            return self._feed(data)
        finally:
            self._checking = 0

    def _upgraded(self, exc: httptools.HttpParserUpgrade, data: Received, events: list[Event]) -> None:
        if not self._connect(events):
            events.append(Upgrade(bytes(data[exc.args[0]:])))

    def _failed(self, exc: httptools.HttpParserError, data: Received, events: list[Event]) -> None:
        self.broken = True
        data = bytes(data)
        # a request whose body the parser refused is not delivered: the error answers it
        for i in range(len(events) - 1, -1, -1):
            kind = type(events[i])
            if kind is Request:
                del events[i:]
                break
            if kind is EndOfMessage:
                break
        error = self._classify(exc, data, events)
        if error is not None:
            events.append(error)

    @property
    def in_head(self) -> bool:
        """Whether part of a request head has come and not all of it."""
        return self._headers is not _TRAILERS and not self.broken

    @property
    def held(self) -> bool:
        """Whether received bytes wait to be parsed (see :meth:`_receive_sliced`): call :meth:`receive_data`
        (with ``b""``) once the requests received so far have been answered."""
        return bool(self._held) and not self.broken

    def _receive_sliced(self, data: Received) -> list[Event]:
        """A large read, or bytes held back: parsed a slice at a time, so that once as many requests as may be
        queued (:attr:`RequestLimits.pipeline`) have come, no more of a flood of pipelined requests is parsed; the
        rest waits, unparsed, in :attr:`held`."""
        if self._held:
            data = self._held + data
            self._held = b""
        view = memoryview(data)
        size = len(data)
        events: list[Event] = []
        requests = 0
        start = 0
        step = _HEAD_SLICE
        while start < size:
            end = min(start + step, size)
            got = self.receive_data(view[start:end])
            events += got
            if self.broken:
                if got and type(got[-1]) is Preface and end < size:
                    # HTTP/2 with prior knowledge: its bytes go on past this slice
                    events[-1] = Preface(got[-1].data + data[end:])
                break
            if got and type(got[-1]) is Upgrade:
                if end < size:
                    events[-1] = Upgrade(got[-1].trailing + data[end:])
                break
            new = sum(1 for event in got if type(event) is Request)
            requests += new
            if requests >= self._limits.pipeline and end < size:
                self._held = bytes(view[end:])
                self._slow = True
                break
            # within a body, large slices; where a request may begin, small ones
            step = _SLICE if not new and not self.in_head else _HEAD_SLICE
            start = end
        return events

    def _after_read(self, data: Received, events: list[Event]) -> None:
        """Bound what a read left pending: a head not complete yet, or bytes that made no event (framing, trailers:
        the parser keeps a field being received)."""
        limits = self._limits
        headers = self._headers
        if headers is not _TRAILERS:
            self._quiet = 0
            if self._begun is not events:
                size = self._carried + len(data)  # the whole read belongs to the head begun before it
            elif not events:
                size = len(data)  # the head is all this read holds (with the empty lines before it)
            else:
                # requests before it in this read: count its request line, fields and the line being received
                size = (len(self._url) + _LINE_EXTRA + _section_size(headers)
                        + len(data) - bytes(data).rfind(b"\n") - 1)
            self._carried = size
            error = None
            if len(self._url) > limits.line:
                error = RequestError(414, "request target too long")
            elif len(headers) > limits.field_count:
                error = RequestError(431, "too many header fields")
            elif size - len(self._url) - _LINE_EXTRA > limits.fields:
                error = RequestError(431, "request header section too large")
        elif not events and not self._inside:
            self._quiet += len(data)
            error = RequestError(431, "too many bytes between requests that make no request") \
                if self._quiet > limits.fields else None
        else:
            self._quiet = 0
            self._slow = bool(self._carried or self._held)
            return
        self._slow = True
        if error is not None:
            self.broken = True
            events.append(error)

    def _connect(self, events: list[Event]) -> bool:
        """CONNECT asks for a tunnel, which an origin server does not open: refuse it (the parser stops reading
        after it, so nothing the client sends next is taken for a request)."""
        for i in range(len(events) - 1, -1, -1):
            event = events[i]
            if type(event) is Request:
                if event.method != b"CONNECT":
                    return False
                del events[i:]
                self.broken = True
                events.append(RequestError(400, "CONNECT is not served here (this is not a proxy)"))
                return True
        return False

    def _classify(self, exc: Exception, data: bytes, events: list[Event]) -> RequestError | Preface | None:
        cause = exc.__context__
        if isinstance(cause, _ParseAbort):
            error = cause.error
            if error.status != 414 and self._url:
                # refused from its headers on: its request line is known, for the access log
                parser = self._parser
                try:
                    error.head = (_get_method(parser), self._url, _get_http_version(parser))
                except httptools.HttpParserError:
                    pass
            return error
        message = str(exc)
        if isinstance(exc, httptools.HttpParserInvalidMethodError):
            return self._method_error(data, events)
        if message.startswith("Invalid method for HTTP"):
            # a method the parser knows from another protocol (RTSP's DESCRIBE, SETUP...): well-formed, not ours
            return RequestError(501, "method not implemented")
        if message.startswith("Pause on PRI") or message.startswith("Expected HTTP/2 Connection Preface"):
            # the HTTP/2 connection preface: the parser stopped after its first line, which ends this data's first
            # line, when no request came before it on the connection
            newline = data.find(b"\n")
            if self._url == b"*" and newline >= 0 and not self.requested:
                if _get_http_version(self._parser) != "2.0":
                    return RequestError(400, "'PRI * HTTP/x.y' is the HTTP/2 connection preface only with HTTP/2.0")
                return Preface(b"PRI * HTTP/2.0\r\n" + data[newline + 1:])
            return RequestError(505, "HTTP version not supported")
        if message.startswith("Data after"):
            # the peer said it would close (RFC 9112 §9.6): what it sends after that is not read, nor answered
            self.keep_alive = False
            return None
        return RequestError(400, message or "malformed request")

    # The parser stops at the first byte that does not continue one of its methods, and does not say where that
    # byte is.  A well-formed token it does not know must get 501 (RFC 9110 §9.1), anything else 400; so the
    # method is found again here, and when it is cut by the end of the data, the verdict waits for more bytes.

    def _method_error(self, data: bytes, events: list[Event]) -> RequestError | Preface | None:
        if self._begun is not events:
            # the request began in an earlier read that ended inside its method: this data continues it (the
            # placeholder stands for the non-empty, token-only start the parser accepted)
            return self._method_verdict(b"M" + data, True)
        if not any(type(event) is EndOfMessage for event in events):
            # the request is the first in this data (after the empty lines the parser skips)
            return self._method_verdict(data.lstrip(b"\r\n"), True)
        # Requests before it in the same data were parsed: take the first line that starts with a token and a
        # space and whose token the parser does not know.  (Lines of a previous request's body could be taken for
        # it; the verdict then only chooses between 400 and 501 for a request that is refused either way.)
        return self._method_verdict(data, False)

    def _method_verdict(self, text: bytes, first_line_only: bool) -> RequestError | Preface | None:
        """400 or 501 for the method at the start of ``text`` (else of its lines); None: wait for more bytes.

        A request line with a well-formed method that is not an HTTP/1 request line at all (no ``HTTP/x.y`` at its
        end) is handed on as a :class:`Preface`: where nothing came before it on the connection, a client with HTTP/2
        prior knowledge sent a broken preface, and the driver answers it in HTTP/2 (else 505)."""
        start = 0
        while True:
            run = _TOKEN_RUN.match(text, start)
            end = run.end() if run is not None else start
            if end == len(text):  # the token runs to the end of what we have
                if end == start or not first_line_only:
                    # nothing; or the last line of a read that held other requests, which may be a body's: no
                    # verdict is worth waiting for (the client would get no answer until it sends more)
                    return RequestError(400, "invalid method")
                if end - start > _METHOD_MAX:
                    return RequestError(501, "method not implemented")
                self._probe = text[start:]
                self._probe_first_line = first_line_only
                return None
            if text[end] == 0x20 and end > start and (first_line_only or not _known_method(text[start:end])):
                if first_line_only:
                    newline = text.find(b"\n")
                    if newline < 0 and len(text) <= self._max_line:
                        self._probe = text  # the verdict waits for the end of the line
                        self._probe_first_line = True
                        return None
                    if newline >= 0 and not self.requested and not _REQUEST_LINE_END.search(text, 0, newline + 1):
                        return Preface(text)  # (where a request came before, it is none: RFC 9113 §3.4)
                return RequestError(501, "method not implemented")
            if first_line_only:
                return RequestError(400, "invalid method")
            newline = text.find(b"\n", end)
            if newline < 0:
                return RequestError(400, "invalid method")
            start = newline + 1

    # httptools callbacks: keep them tiny, they run per request / per header.

    def on_message_begin(self) -> None:
        self._begun = self._events
        if self._line_read == b"":
            self._line_read = None  # a request begun after another in this read: the next read does not begin one
        self._url = b""
        self._headers = []
        self._hosts = 0
        self._expect = False
        self._te_trailers = False  # a "te: trailers" line among the previous request's chunked trailers

    def on_url(self, url: bytes) -> None:
        if self._url:  # the target came in more than one read
            url = self._url + url
        self._url = url
        if len(url) > self._max_line:
            raise _ParseAbort(RequestError(414, "request target too long"))

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = _request_names.get(name)
        if lname is None:
            lname = name.lower()
            if len(name) <= _REQUEST_NAME_KEPT and len(_request_names) < _REQUEST_NAMES_MAX:
                _request_names[name] = lname
        name = lname
        if value and (value[-1] == 0x20 or value[-1] == 0x09):
            value = value.rstrip(b" \t")  # the parser drops leading whitespace, not trailing (RFC 9112 §5)
        headers = self._headers
        if headers is not _TRAILERS:
            headers.append((name, value))
        if name in _WATCHED_REQUEST:
            if name == b"host":
                self._hosts += 1
                if value not in _valid_hosts:
                    if not _HOST.fullmatch(value):
                        raise _ParseAbort(RequestError(400, "invalid Host header"))
                    if len(_valid_hosts) < _KNOWN_MAX:
                        _valid_hosts.add(value)
            elif name == b"content-length":
                # the parser let through only digits (it refuses anything else before this is called)
                if len(value) >= self._body_digits and int(value) > self._max_body:
                    raise _ParseAbort(RequestError(413, "request body larger than the limit"))
            elif name == b"transfer-encoding":
                self._chunked = True  # its body is accounted from the next read (see _framing_read)
                if value.lower() != b"chunked" or self._te_other:
                    self._transfer_coding(value)
            elif name == b"te":
                if b"trailers" in value.lower():
                    self._te_trailers = True
            elif name == b"expect":
                if value.lower() == b"100-continue":
                    self._expect = True
            else:
                self.forwarded = True

    def _transfer_coding(self, value: bytes) -> None:
        # RFC 9112 §6.1: a request's transfer codings must end with chunked (else the parser answers 400); one we do
        # not implement before it gets 501.  A request that sets _te_other always ends with one of these errors.
        codings = [c.strip() for c in value.lower().split(b",")]
        if codings[-1] == b"chunked" and (self._te_other or len(codings) > 1):
            raise _ParseAbort(RequestError(501, "transfer coding not implemented"))
        self._te_other = True

    def _check_head(self, headers: Headers) -> None:
        """The head's limits, when it may be over them (see :attr:`_checking`), and its field count."""
        limits = self._limits
        if len(self._url) > limits.line:
            raise _ParseAbort(RequestError(414, "request target too long"))
        if len(headers) > limits.field_count:
            raise _ParseAbort(RequestError(431, "too many header fields"))
        if self._checking == 2:
            self._carried = 0
            if _section_size(headers) > limits.fields:
                raise _ParseAbort(RequestError(431, "request header section too large"))

    def _check_target(self, method: bytes, url: bytes, headers: Headers) -> None:
        # RFC 9112 §3.2.4: the asterisk form only with OPTIONS
        if url == b"*":
            if method != b"OPTIONS":
                raise _ParseAbort(RequestError(400, "the '*' target is only for OPTIONS"))
            return
        absolute = _ABSOLUTE_FORM.match(url)
        if absolute is not None:
            # absolute-form (§3.2.2): the target's authority is the host, whatever the Host field says
            authority = absolute.group(1)
            if not authority or b"@" in authority or not _HOST.fullmatch(authority):
                raise _ParseAbort(RequestError(400, "invalid authority in the request target"))
            for i, (name, _) in enumerate(headers):
                if name == b"host":
                    headers[i] = (b"host", authority)
                    break
            else:
                headers.append((b"host", authority))

    def on_headers_complete(self) -> None:
        headers = self._headers
        if len(headers) > self._max_fields or self._checking == 2:
            self._check_head(headers)
        field_limit = self._max_field_size
        if field_limit and any(len(name) + len(value) > field_limit for name, value in headers):
            raise _ParseAbort(RequestError(431, "a request header field larger than the limit"))
        parser = self._parser
        method = _get_method(parser)
        read = self._line_read
        if read:
            # the first request of a read that began with it: its version is where the read says, in the usual
            # request line, rather than a string the parser formats anew for each request (a line that does not
            # begin the read, or is spaced otherwise, matches neither: the parser tells)
            self._line_read = None
            at = len(method) + len(self._url) + 2
            line_end = read[at:at + 10]
            version = "1.1" if line_end == b"HTTP/1.1\r\n" else "1.0" if line_end == b"HTTP/1.0\r\n" \
                else _get_http_version(parser)
        else:
            version = _get_http_version(parser)
        if version != "1.1":
            if version == "1.0":
                if self._hosts > 1:
                    raise _ParseAbort(RequestError(400, "more than one Host header"))
                if any(name == b"transfer-encoding" for name, _ in headers):
                    # RFC 9112 §6.1: the framing of an HTTP/1.0 message with Transfer-Encoding is faulty
                    raise _ParseAbort(RequestError(400, "Transfer-Encoding in an HTTP/1.0 request"))
            elif version[:2] == "1.":
                version = "1.1"  # a higher minor version of HTTP/1: handled as HTTP/1.1 (RFC 9110 §2.5)
            else:
                raise _ParseAbort(RequestError(505, "HTTP version not supported"))
        if self._hosts != 1 and version == "1.1":
            raise _ParseAbort(RequestError(400, "missing Host header" if not self._hosts
                                           else "more than one Host header"))
        if self._url[0] != 0x2F:  # not "/": absolute-form, "*" or authority-form
            self._check_target(method, self._url, headers)
        upgrade = None
        if _should_upgrade(parser):
            for name, value in headers:
                if name == b"upgrade":
                    upgrade = value.strip().lower()
                    break
        self._headers = _TRAILERS
        self.requested = True
        request = Request(method, self._url, version, headers, _should_keep_alive(parser),
                          self._expect and version == "1.1", 0, upgrade)
        if self._te_trailers:  # rare: reset only when set
            self._te_trailers = False
            request.trailers = version == "1.1"
        self._events.append(request)

    def on_body(self, body: bytes) -> None:
        events = self._events
        if len(body) < _SMALL_BODY and events:
            last = events[-1]
            if type(last) is Data:  # the same body: a request's head or end would be between them
                data = last.data
                if type(data) is bytearray:
                    data += body
                    return
                if len(data) < _SMALL_BODY:
                    joined = bytearray(data)
                    joined += body
                    last.data = joined
                    return
        events.append(Data(body))

    def on_chunk_header(self) -> None:
        self._chunks += 1
        self._chunked = True

    def on_message_complete(self) -> None:
        self._chunked = False
        self._line_read = b""
        self._events.append(_END)

    # ------------------------------------------------------------------ outbound

    def start_response(self, request: Request, status: object, headers: Iterable[Any]) -> None:
        """Begin the response to ``request``; the head is held until the first :meth:`send_body`.  ``status`` and
        ``headers`` are what the app sent, checked here."""
        if self._state != _IDLE:
            raise ProtocolError("the response has already started")
        if type(status) is not int:
            raise ProtocolError(f"status must be an int in 200..599 (1xx are informational), not {status!r}")
        version10 = request.http_version == "1.0"
        self._version10 = version10
        line = (_STATUS_LINES_10 if version10 else _STATUS_LINES).get(status)
        if line is None:
            if not 200 <= status <= 599:
                raise ProtocolError(f"status must be an int in 200..599 (1xx are informational), not {status!r}")
            line = status_line(status, b"1.0" if version10 else b"1.1")
        elif status < 200:
            raise ProtocolError(f"status {status} is informational: send it before the final response")
        keep_alive = request.keep_alive and self.keep_alive
        content_length = length_at = connection_at = -1
        has_date = has_server = has_alt_svc = app_connection = False
        parts = [line]
        try:
            for pair in headers:
                if type(pair) is tuple:
                    known = _known_lines.get(pair)
                    if known is not None:
                        parts.append(known)
                        continue
                    length_line = _known_length_lines.get(pair)
                    if length_line is not None:
                        if content_length >= 0:
                            raise ProtocolError("more than one content-length header")
                        known, content_length = length_line
                        length_at = len(parts)
                        parts.append(known)
                        continue
                name, value = pair
                lname = _known_names.get(name)
                if lname is None:
                    lname = name.lower()
                    if lname not in _SPECIAL_RESPONSE and not _TOKEN.fullmatch(name):
                        raise ProtocolError(f"invalid header name {name!r}")
                    if type(name) is bytes and len(_known_names) < _KNOWN_MAX:
                        _known_names[name] = lname
                if lname in _SPECIAL_RESPONSE:
                    if lname == _CONTENT_LENGTH:
                        if content_length >= 0:
                            raise ProtocolError("more than one content-length header")
                        length = _known_lengths.get(value) if type(value) is bytes else None
                        if length is None:
                            if type(value) is not bytes or not value.isdigit():
                                raise ProtocolError(f"content-length must be ASCII digits (bytes), not {value!r}")
                            length = int(value)
                            if len(_known_lengths) < _KNOWN_LENGTHS_MAX:
                                _known_lengths[value] = length
                        content_length = length
                        length_at = len(parts)
                        known = name + b": " + value + b"\r\n"
                        if (type(pair) is tuple and type(name) is bytes
                                and len(_known_length_lines) < _KNOWN_LENGTHS_MAX):
                            _known_length_lines[pair] = (known, length)
                        parts.append(known)
                        continue
                    if lname == b"transfer-encoding":
                        continue  # framing is ours to choose
                    if lname == b"connection":
                        app_connection = True
                        if b"close" in value.lower():
                            keep_alive = False
                        else:
                            connection_at = len(parts)
                    elif lname == b"date":
                        has_date = True
                    elif lname == b"server":
                        has_server = True
                    else:
                        has_alt_svc = True
                if value not in _known_values:
                    if _BAD_VALUE.search(value) is not None:
                        raise ProtocolError(f"header {name!r} has CR, LF or NUL (or another control character) "
                                            "in its value")
                    if len(value) <= 64 and len(_known_values) < _KNOWN_MAX:
                        _known_values.add(value)
                if (len(value) <= 64 and type(pair) is tuple and type(name) is bytes and type(value) is bytes
                        and lname not in _SPECIAL_RESPONSE and len(_known_lines) < _KNOWN_LINES_MAX):
                    known = name + b": " + value + b"\r\n"
                    _known_lines[pair] = known
                    parts.append(known)
                else:
                    parts += (name, b": ", value, b"\r\n")
        except (TypeError, ValueError, AttributeError):
            raise ProtocolError(f"headers must be an iterable of (name, value) byte string pairs, not {headers!r}"
                                ) from None
        defaults = self._defaults
        if not has_date and not has_server and not has_alt_svc:
            parts.append(defaults.together)
        else:
            if not has_server:
                parts.append(defaults.server)
            if not has_date:
                parts.append(defaults.date)
            parts.append(defaults.extra)
            if not has_alt_svc:
                parts.append(defaults.alt_svc)

        if status == 204 or status == 304:
            if status == 204 and length_at >= 0:
                del parts[length_at]  # never sent on a 204 (RFC 9110 §8.6); some frameworks add one
            self._framing = _NO_BODY
        elif request.method == b"HEAD":
            self._framing = _HEAD_ONLY
        elif content_length >= 0:
            self._framing = _LENGTH
            self._remaining = content_length
        else:
            self._framing = _UNDECIDED
        if not keep_alive:
            self.keep_alive = False
            if not app_connection:
                parts.append(b"connection: close\r\n")
            elif connection_at >= 0:
                parts[connection_at + 2] = b"close"  # the connection closes, whatever the app said
        elif version10 and not app_connection:
            parts.append(b"connection: keep-alive\r\n")
        self._response_keep_alive = keep_alive
        self._head = b"".join(parts)
        self._state = _HEAD_PENDING

    def send_body(self, data: bytes, end: bool) -> None:
        """Frame a body piece (``end``: it is the last) and hand the bytes to :attr:`write`, in order."""
        write = self.write
        if self._state == _SENDING:
            framing = self._framing
            if framing == _CHUNKED:
                if data:
                    if len(data) <= _COPY_LIMIT:
                        write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data) if end
                              else b"%x\r\n%b\r\n" % (len(data), data))
                    else:
                        write(b"%x\r\n" % len(data))
                        write(data)
                        write(b"\r\n0\r\n\r\n" if end else b"\r\n")
                elif end:
                    write(b"0\r\n\r\n")
                if end:
                    self._state = _DONE
                return
            head = b""
        elif self._state == _HEAD_PENDING:
            head = self._head
            self._head = b""
            self._state = _SENDING
            framing = self._framing
            if framing == _UNDECIDED:
                if end:
                    framing = _LENGTH
                    self._remaining = len(data)
                    head += b"content-length: %d\r\n\r\n" % len(data)
                elif not self._version10:
                    framing = _CHUNKED
                    head += b"transfer-encoding: chunked\r\n\r\n"
                    if data:
                        size = b"%x\r\n" % len(data)
                        if len(data) <= _COPY_LIMIT:
                            write(head + size + data + b"\r\n")
                        else:
                            write(head + size)
                            write(data)
                            write(b"\r\n")
                    else:
                        write(head)
                    self._framing = framing
                    return
                else:
                    framing = _CLOSE_DELIMITED
                    self.keep_alive = False
                    if self._response_keep_alive:
                        # we announced keep-alive, but a close-delimited body ends with the connection
                        head = head.replace(b"connection: keep-alive\r\n", b"connection: close\r\n")
                    head += b"\r\n"
                self._framing = framing
            else:
                head += b"\r\n"
        else:
            raise ProtocolError("the response is complete" if self._state == _DONE
                                else "the response has not started")

        if framing == _LENGTH:
            remaining = self._remaining - len(data)
            if remaining < 0:
                self._fail()
                raise ProtocolError("the app sent more body than its content-length")
            self._remaining = remaining
            if end:
                self._state = _DONE
                if remaining:
                    self._fail()
                    raise ProtocolError(f"the app ended the body {remaining} bytes short of its content-length")
        elif framing == _NO_BODY or framing == _HEAD_ONLY:
            if data and framing == _NO_BODY:
                self._fail()
                raise ProtocolError("a 204 or 304 response must not have a body")
            data = b""  # the body of a response to HEAD is not sent
            if end:
                self._state = _DONE
        elif end:  # close-delimited
            self._state = _DONE
        if head:
            if len(data) <= _COPY_LIMIT:
                write(head + data)
                return
            write(head)
        if data:
            write(data)

    def file_framing(self, size: int, end: bool) -> tuple[bytes, bytes, bool]:
        """Frame a body piece of ``size`` bytes that the caller writes itself (a file sent with ``sendfile``):
        ``(before, after, send)``: what goes before it (the head, if still held, and a chunk's size line), what goes
        after it (the chunk's end, and the last chunk if ``end``), and whether the piece is sent at all (not in the
        response to a HEAD request)."""
        if self._state == _HEAD_PENDING:
            head = self._head
            self._head = b""
            self._state = _SENDING
            framing = self._framing
            if framing == _UNDECIDED:
                if end:
                    framing = _LENGTH
                    self._remaining = size
                    head += b"content-length: %d\r\n" % size
                elif not self._version10:
                    framing = _CHUNKED
                    head += b"transfer-encoding: chunked\r\n"
                else:
                    framing = _CLOSE_DELIMITED
                    self.keep_alive = False
                    if self._response_keep_alive:
                        head = head.replace(b"connection: keep-alive\r\n", b"connection: close\r\n")
                self._framing = framing
            head += b"\r\n"
        elif self._state == _SENDING:
            head = b""
            framing = self._framing
        else:
            raise ProtocolError("the response is complete" if self._state == _DONE
                                else "the response has not started")
        if framing == _CHUNKED:
            if end:
                self._state = _DONE
            if not size:
                return head + (b"0\r\n\r\n" if end else b""), b"", False
            return head + b"%x\r\n" % size, b"\r\n0\r\n\r\n" if end else b"\r\n", True
        if framing == _NO_BODY or framing == _HEAD_ONLY:
            if size and framing == _NO_BODY:
                self._fail()
                raise ProtocolError("a 204 or 304 response must not have a body")
            if end:
                self._state = _DONE
            return head, b"", False
        if framing == _LENGTH:
            remaining = self._remaining - size
            if remaining < 0:
                self._fail()
                raise ProtocolError("the app sent more body than its content-length")
            self._remaining = remaining
            if end and remaining:
                self._fail()
                raise ProtocolError(f"the app ended the body {remaining} bytes short of its content-length")
        if end:
            self._state = _DONE
        return head, b"", size > 0

    def _fail(self) -> None:
        self.keep_alive = False
        self._state = _DONE

    def send_trailers(self, headers: Headers) -> None:
        """End a body sent with ``end`` False: a chunked body gets the trailer fields, other framings end as is."""
        if self._state == _HEAD_PENDING:
            self.send_body(b"", False)
        elif self._state != _SENDING:
            raise ProtocolError("the response is complete" if self._state == _DONE
                                else "the response has not started")
        if self._framing == _LENGTH and self._remaining:
            self._fail()
            raise ProtocolError(f"the app ended the body {self._remaining} bytes short of its content-length")
        self._state = _DONE
        if self._framing != _CHUNKED:
            return  # only a chunked body carries trailers (RFC 9112 §7.1.2)
        lines = [b"0\r\n"]
        for name, value in headers:
            if (type(name) is not bytes or type(value) is not bytes or not _TOKEN.fullmatch(name)
                    or _BAD_VALUE.search(value) is not None):
                self._fail()
                raise ProtocolError(f"invalid trailer {name!r}")
            lines.append(b"%s: %s\r\n" % (name, value))
        lines.append(b"\r\n")
        self.write(b"".join(lines))

    def informational(self, status: int, headers: Headers | None = None) -> bytes:
        """Bytes of a 1xx response (100 Continue, 103 Early Hints) before the final one."""
        if not 100 <= status <= 199 or status == 101:
            raise ProtocolError(f"not an informational status: {status}")
        if self._state != _IDLE and self._state != _HEAD_PENDING:
            raise ProtocolError("the final response has already started")
        lines = [_STATUS_LINES.get(status) or status_line(status)]
        for name, value in headers or ():
            if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value) is not None:
                raise ProtocolError(f"invalid informational header {name!r}")
            lines.append(b"%s: %s\r\n" % (name, value))
        lines.append(b"\r\n")
        return b"".join(lines)

    def error_response(self, status: int, detail: str = "", extra: bytes = b"") -> bytes:
        """A complete short response for an error we answer ourselves (``extra``: more header lines, each ending
        with CRLF); the connection closes after it."""
        self.keep_alive = False
        self._state = _DONE
        body = (HTTPStatus(status).phrase if status in _STATUS_LINES else "Error").encode()
        if detail:
            body += b": " + detail.encode("ascii", "backslashreplace")
        body += b"\n"
        return b"".join((_STATUS_LINES.get(status) or status_line(status), self._defaults.together,
                         b"content-type: text/plain; charset=utf-8\r\n", b"connection: close\r\n", extra,
                         b"content-length: %d\r\n\r\n" % len(body), body))

    @property
    def response_started(self) -> bool:
        return self._state == _SENDING or self._state == _DONE

    @property
    def response_complete(self) -> bool:
        return self._state == _DONE

    def close_after_response(self) -> None:
        """The response in progress (or the next one) is the last on this connection: it says
        ``connection: close``."""
        self.keep_alive = False

    def stop(self) -> None:
        """This connection carries no more requests: what else comes is not parsed as requests."""
        self.broken = True

    def release(self) -> None:
        """The transport is gone or given to another protocol: drop the parser, whose callbacks are this object's
        methods (a reference cycle, left for the garbage collector to find, with the driver and transport it holds).
        Nothing is parsed after this; a second call does nothing."""
        try:
            del self._parser
        except AttributeError:
            pass

    def next_response(self) -> None:
        """Get ready to answer the next pipelined request (the previous response is complete)."""
        self._state = _IDLE
