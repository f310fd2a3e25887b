"""Serve the simulator with waitress: in a background thread for tests, or in the foreground.

Entry points (all keyword options are `SimulatorOptions` fields, see `OptionFields`):

    start_in_thread(host="127.0.0.1", port=0, *, threads=8, options=None, **fields)
        -> RunningSimulator          # .url, .port, .app, .client(), .stop(); a context manager
    serve(host="127.0.0.1", port=8900, *, threads=8, on_ready=None, options=None, **fields)
        -> None                      # blocks until SIGINT/SIGTERM
    main(argv: list[str] | None = None) -> int
        # the `python -m export_poller.providers.simulator` CLI; prints one line ending with the URL

Waitress runs its event loop here rather than in `server.run()`, so that `stop()` can end it
from another thread without touching waitress internals: it sets a flag and wakes the loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, Unpack

from waitress import wasyncore
from waitress.server import BaseWSGIServer, create_server

from export_poller.providers.simulator.app import SimulatorApp
from export_poller.providers.simulator.cli import (
    banner,
    banner_data,
    build_parser,
    options_from_args,
)
from export_poller.providers.simulator.client import SimulatorClient
from export_poller.providers.simulator.options import OptionFields, SimulatorOptions, make_options

log = logging.getLogger("export_poller.providers.simulator")

WAITRESS_SETTINGS: dict[str, Any] = {
    "ident": "provider-simulator",
    "connection_limit": 1000,
    "channel_timeout": 60,
    "expose_tracebacks": False,
    "asyncore_use_poll": True,
}
_LOOP_TIMEOUT_S = 0.5

_Handler = Callable[[int, FrameType | None], Any] | int | None


def _options(options: SimulatorOptions | None, fields: OptionFields) -> SimulatorOptions:
    if options is not None and fields:
        raise TypeError("pass either options= or option fields, not both")
    return options if options is not None else make_options(**fields)


def _create_server(
    app: SimulatorApp, host: str, port: int, threads: int, socket_map: dict[int, Any]
) -> BaseWSGIServer:
    server = create_server(
        app, map=socket_map, host=host, port=port, threads=threads, **WAITRESS_SETTINGS
    )
    if not isinstance(server, BaseWSGIServer):
        server.close()
        raise ValueError(f"expected one listening socket for {host}:{port}")
    return server


def _url(server: BaseWSGIServer) -> str:
    host, port = server.getsockname()
    return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"


def _run_loop(server: BaseWSGIServer, socket_map: dict[int, Any], stop: threading.Event) -> None:
    try:
        while socket_map and not stop.is_set():
            wasyncore.loop(timeout=_LOOP_TIMEOUT_S, use_poll=True, map=socket_map, count=1)
    finally:
        # Let in-flight requests finish first: they pull the trigger, whose file descriptor
        # must not be closed (and perhaps reused by another server) under them.
        server.task_dispatcher.shutdown(timeout=5)
        wasyncore.close_all(socket_map, ignore_all=True)


@dataclass
class RunningSimulator:
    """A simulator serving from a daemon thread; `stop()` closes every socket it opened."""

    url: str
    app: SimulatorApp
    _server: BaseWSGIServer = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def client(self) -> SimulatorClient:
        return SimulatorClient(self.url)

    def stop(self, timeout: float = 10.0) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        # The serving loop closes its trigger as it ends; if it has ended already there is
        # nothing left to wake (seen once as EBADF at a test's teardown).
        with contextlib.suppress(OSError):
            self._server.pull_trigger()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("simulator at %s did not stop within %.0fs", self.url, timeout)

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_in_thread(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    threads: int = 8,
    options: SimulatorOptions | None = None,
    **fields: Unpack[OptionFields],
) -> RunningSimulator:
    """Start serving before returning: the socket is bound, so `.url` is usable at once."""
    # Waitress warns whenever a request waits for a free thread; under load that is expected.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    app = SimulatorApp(_options(options, fields))
    socket_map: dict[int, Any] = {}
    server = _create_server(app, host, port, threads, socket_map)
    stop = threading.Event()
    thread = threading.Thread(
        target=_run_loop, args=(server, socket_map, stop), name="provider-simulator", daemon=True
    )
    thread.start()
    return RunningSimulator(url=_url(server), app=app, _server=server, _thread=thread, _stop=stop)


def serve(
    host: str = "127.0.0.1",
    port: int = 8900,
    *,
    threads: int = 8,
    on_ready: Callable[[str], None] | None = None,
    options: SimulatorOptions | None = None,
    **fields: Unpack[OptionFields],
) -> None:
    """Serve in this thread until SIGINT or SIGTERM (handled when called from the main thread)."""
    app = SimulatorApp(_options(options, fields))
    socket_map: dict[int, Any] = {}
    server = _create_server(app, host, port, threads, socket_map)
    stop = threading.Event()
    previous = _stop_on_signals(stop)
    try:
        if on_ready is not None:
            on_ready(_url(server))
        _run_loop(server, socket_map, stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_on_signals(stop: threading.Event) -> dict[signal.Signals, _Handler]:
    """SIGINT/SIGTERM end the loop cleanly (sockets closed, threads joined); only the main
    thread may install handlers, so elsewhere the caller owns shutdown."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[signal.Signals, _Handler] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda *_: stop.set())
    return previous


def _banner(url: str, options: SimulatorOptions, as_json: bool) -> str:
    return json.dumps(banner_data(url, options)) if as_json else banner(url, options)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """CLI entry point; returns the exit status instead of exiting, for the project CLI."""
    parser = build_parser(prog) if prog else build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    # Waitress warns whenever a request waits for a free thread; under load that is expected.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    try:
        options = options_from_args(args)
        serve(
            args.host,
            args.port,
            threads=args.threads,
            options=options,
            on_ready=lambda url: print(_banner(url, options, args.json), flush=True),
        )
    except (OSError, ValueError) as exc:
        print(f"provider simulator: {exc}", file=sys.stderr)
        return 2
    return 0
