"""The HTTP server of both of a node's ports (the API, and the peer port's websocket
upgrade): aiohttp's, except for what its HTTP parser answers before any handler runs. A bad
request line, method, header or chunked body gets the JSON error shape
(``{"error": {"code": ..., "message": ...}}``) with 400, and costs the log no traceback: a
DEBUG line, and at most one WARNING a minute that counts them (``MalformedRequests``), so a
stranger who sends them by the thousand cannot flood it.

aiohttp has no setting for this (aio-libs/aiohttp#3287): ``Runner`` relies on
``AppRunner._make_server`` and ``Server._loop``/``_kwargs`` of the pinned aiohttp;
tests/integration/test_api_contract.py and test_p2p.py fail if an upgrade breaks them.
"""

import logging
import time
from collections.abc import Callable
from http import HTTPStatus

from aiohttp import web

log = logging.getLogger("qnet.http")


def error(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def printable(text: str, limit: int = 200) -> str:
    """A stranger's text (aiohttp quotes the bad bytes) as one short printable line."""
    line = " ".join(text.split())
    return "".join(c if c.isprintable() else "?" for c in line)[:limit]


class MalformedRequests:
    """Requests refused for their HTTP framing: each logged at DEBUG, and at most one WARNING
    every ``every_s`` with how many there were since the last, so a stranger who sends them
    by the thousand cannot flood the log."""

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.every_s, self._clock = every_s, clock
        self._count = 0
        self._next_report = 0.0

    def note(self, remote: str | None, reason: str) -> None:
        self._count += 1
        log.debug("malformed HTTP request from %s: %s", remote, reason)
        now = self._clock()
        if now >= self._next_report:
            log.warning(
                "refused %d malformed HTTP request(s) with 400 since the last report (the "
                "latest from %s: %s); next report in %g s at the earliest",
                self._count,
                remote,
                reason,
                self.every_s,
            )
            self._count, self._next_report = 0, now + self.every_s


MALFORMED = MalformedRequests()


class RequestHandler(web.RequestHandler):
    """aiohttp's HTTP protocol, but what it answers itself (a request its parser refuses,
    or a failure outside any handler) gets the JSON error shape; a refused request is
    counted in ``MALFORMED`` instead of logged with its traceback."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != HTTPStatus.BAD_REQUEST:
            # Ours, not the client's (500, 504): aiohttp logs it with its traceback.
            super().handle_error(request, status, exc, message)
            code = "timeout" if status == HTTPStatus.GATEWAY_TIMEOUT else "internal"
            answer = error(status, code, "the node failed to handle this request; see its log")
        else:
            reason = printable(message or str(exc or "") or "bad request")
            MALFORMED.note(request.remote, reason)
            if request.writer.output_size > 0:  # as aiohttp: too late for another answer
                raise ConnectionError("an answer is sent already; cannot send the error")
            answer = error(400, "bad_request", f"malformed HTTP request: {reason}")
        answer.force_close()
        return answer

    def log_exception(self, *args, **kw) -> None:
        """After an answer, aiohttp drains what is left of the request's body; a body the
        client broke (refused by ``_read_body``, counted there) fails that again: not ours."""
        if isinstance(kw.get("exc_info"), web.RequestPayloadError):
            log.debug("the rest of a malformed request body was dropped")
            return
        super().log_exception(*args, **kw)


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        return RequestHandler(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """``web.AppRunner`` whose connections are ``RequestHandler``s. aiohttp has no setting
    for the protocol class (aio-libs/aiohttp#3287): the server the runner made (with the
    app's handler arguments) is given the class that makes them."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the same state; only its protocol factory differs
        return server
