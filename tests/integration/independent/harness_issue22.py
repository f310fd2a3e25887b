"""Harness for the independent acceptance test of issue 22: every key a script touches is in KEYS.

Written from the issue, the README and the earlier independent suites alone; nothing here
reads or imports the service's implementation. The test process never imports
``export_poller``: the service runs as the README says (``celery -A export_poller worker``,
``celery -A export_poller beat``, ``export-poller simulate``, the CLI), and the public API is
called from small client scripts run as subprocesses.

How a script's keys are audited, black-box:

* ``MONITOR`` (redis-py's ``Redis.monitor()``, in a thread) records the raw reply lines of a
  private ``redis-server``. redis-py's own parser joins a command's arguments into one string,
  losing where one ends and the next begins, so each line is parsed here instead: Redis writes
  every argument with ``sdscatrepr`` (double quotes; ``\\\\``, ``\\"``, ``\\n``, ``\\r``,
  ``\\t``, ``\\a``, ``\\b`` and ``\\xHH`` escapes), which is undone byte for byte.
* Redis feeds an ``EVAL``/``EVALSHA``/``FCALL`` (and their ``_RO`` forms) to monitors before it
  runs the script, then every command the script runs, tagged with the source ``lua``. A script
  runs atomically, so the ``lua`` lines right after a script call are exactly its commands (the
  self-check below proves this order on the server in use).
* The key arguments of each such command come from the server itself, ``COMMAND GETKEYS``, on a
  separate connection. Commands whose keys sit at fixed positions (no ``movablekeys`` flag in
  ``COMMAND INFO``) are cached by shape (name, subcommand, argument count), their positions
  found once with placeholder arguments; commands whose keys depend on their arguments
  (``ZUNIONSTORE``'s numkeys, ``SORT``, ...) are asked with their real arguments each time.
* Each key must be one of that call's KEYS (``numkeys`` arguments after the script or function
  name). Commands that reach keys no argument names (``KEYS``, ``SCAN``, ``RANDOMKEY``, the
  flushes) count as touching undeclared keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

BIN = Path(sys.executable).parent
CELERY = str(BIN / "celery")
EXPORT_POLLER = str(BIN / "export-poller")

SCRIPT_CALLS = {b"eval", b"evalsha", b"eval_ro", b"evalsha_ro", b"fcall", b"fcall_ro"}
# Commands that reach keys no argument names: a script using them touches undeclared keys.
KEYSPACE_COMMANDS = {b"keys", b"scan", b"randomkey", b"flushdb", b"flushall", b"swapdb"}
NO_KEYS = "The command has no key arguments"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    cond: Callable[[], Any],
    timeout: float,
    what: str,
    diag: Callable[[], str] = lambda: "",
    interval: float = 0.25,
) -> Any:
    """Poll ``cond`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{diag()}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# MONITOR lines


class MonitorParseError(ValueError):
    pass


@dataclass(frozen=True)
class MonitorLine:
    db: int
    source: str  # "127.0.0.1:port", "unix:...", or "lua" for a command a script ran
    args: tuple[bytes, ...]

    @property
    def command(self) -> bytes:
        return self.args[0].lower() if self.args else b""

    @property
    def from_script(self) -> bool:
        return self.source == "lua"


_HEAD = re.compile(rb"^\+?(\d+\.\d+) \[(\d+) ([^\]]*)\] ")
_ESCAPES = {
    ord("\\"): 0x5C,
    ord('"'): 0x22,
    ord("n"): 0x0A,
    ord("r"): 0x0D,
    ord("t"): 0x09,
    ord("a"): 0x07,
    ord("b"): 0x08,
}


def _quoted(raw: bytes, pos: int) -> tuple[bytes, int]:
    """One ``sdscatrepr`` argument starting at the opening quote; returns it and the end."""
    if raw[pos : pos + 1] != b'"':
        raise MonitorParseError(f"expected a quote at {pos}: {raw[:200]!r}")
    out = bytearray()
    pos += 1
    while pos < len(raw):
        c = raw[pos]
        if c == 0x22:
            return bytes(out), pos + 1
        if c != 0x5C:
            out.append(c)
            pos += 1
            continue
        esc = raw[pos + 1] if pos + 1 < len(raw) else -1
        if esc == ord("x"):
            out.append(int(raw[pos + 2 : pos + 4], 16))
            pos += 4
        elif esc in _ESCAPES:
            out.append(_ESCAPES[esc])
            pos += 2
        else:
            raise MonitorParseError(f"unknown escape at {pos}: {raw[:200]!r}")
    raise MonitorParseError(f"unterminated argument: {raw[:200]!r}")


def parse_monitor_line(raw: bytes | str) -> MonitorLine:
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
    head = _HEAD.match(raw)
    if head is None:
        raise MonitorParseError(f"not a MONITOR line: {raw[:200]!r}")
    pos, args = head.end(), []
    while pos < len(raw):
        arg, pos = _quoted(raw, pos)
        args.append(arg)
        if pos < len(raw):
            if raw[pos : pos + 1] != b" ":
                raise MonitorParseError(f"expected a space at {pos}: {raw[:200]!r}")
            pos += 1
    if not args:
        raise MonitorParseError(f"no command: {raw[:200]!r}")
    return MonitorLine(int(head.group(2)), head.group(3).decode(), tuple(args))


class Monitor:
    """Records every raw MONITOR line of a server, from a marker on, until a closing marker."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lines: list[bytes] = []
        self.error: BaseException | None = None
        self._token = uuid.uuid4().hex
        self._client = redis.Redis(port=port, socket_timeout=5)
        self._mon_client = redis.Redis(port=port)
        self._thread = threading.Thread(target=self._run, daemon=True, name="i22-monitor")
        self._connection: Any = None

    def _run(self) -> None:
        end = f"i22-monitor-end-{self._token}".encode()
        try:
            with self._mon_client.monitor() as mon:
                self._connection = mon.connection
                while True:
                    line = mon.connection.read_response()
                    if isinstance(line, str):
                        line = line.encode("latin-1")
                    self.lines.append(line)
                    if end in line:
                        return
        except BaseException as exc:
            self.error = exc

    def start(self) -> None:
        self._thread.start()
        start = f"i22-monitor-start-{self._token}".encode()

        def seen() -> bool:
            self._client.echo(start)  # MONITOR starts late; say it again until it is heard
            return any(start in line for line in self.lines[-50:]) or self.error is not None

        wait_for(seen, 20, "MONITOR to hear the start marker")
        assert self.error is None, f"MONITOR failed: {self.error!r}"
        self.lines.clear()

    def stop(self) -> list[bytes]:
        """Everything the server ran until now, in order; the closing marker excluded."""
        self._client.echo(f"i22-monitor-end-{self._token}")
        self._thread.join(60)
        assert not self._thread.is_alive(), "MONITOR never heard the closing marker"
        assert self.error is None, f"MONITOR failed: {self.error!r}"
        self._client.close()
        self._mon_client.close()
        return self.lines[:-1]

    def close(self) -> None:
        """Tear-down after a failure: unblock the thread if it still reads."""
        if self._thread.is_alive() and self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.disconnect()
        self._thread.join(5)
        self._client.close()
        self._mon_client.close()


# ---------------------------------------------------------------------------------------------
# the key arguments of a command, from the server


class KeyFinderError(RuntimeError):
    pass


class KeyFinder:
    """``COMMAND GETKEYS`` on its own connection, cached by command shape where that is safe."""

    def __init__(self, port: int) -> None:
        self.conn = redis.Connection(port=port, socket_timeout=10)
        self.conn.connect()
        self._info: dict[bytes, tuple[set[bytes], dict[bytes, set[bytes]]]] = {}
        self._positions: dict[tuple[bytes, bytes, int], list[int]] = {}
        self._movable: dict[tuple[bytes, ...], list[bytes]] = {}
        self.calls = 0

    def _ask(self, *args: bytes | str) -> Any:
        self.conn.send_command(*args)
        try:
            return self.conn.read_response()
        except redis.ResponseError as exc:
            return exc

    def _command_info(self, name: bytes) -> tuple[set[bytes], dict[bytes, set[bytes]]]:
        """(flags, {subcommand: its flags}) of one command, from COMMAND INFO."""
        if name not in self._info:
            reply = self._ask("COMMAND", "INFO", name)
            if isinstance(reply, Exception) or not reply or reply[0] is None:
                raise KeyFinderError(f"COMMAND INFO {name!r}: {reply!r}")
            entry = reply[0]
            subs = {sub[0].lower(): set(sub[2]) for sub in (entry[9] if len(entry) > 9 else [])}
            self._info[name] = (set(entry[2]), subs)
        return self._info[name]

    def _getkeys(self, args: tuple[bytes, ...]) -> list[bytes]:
        self.calls += 1
        reply = self._ask("COMMAND", "GETKEYS", *args)
        if isinstance(reply, Exception):
            if NO_KEYS in str(reply):
                return []
            raise KeyFinderError(f"COMMAND GETKEYS {args[:6]!r}...: {reply}")
        return list(reply)

    def keys(self, args: tuple[bytes, ...]) -> list[bytes]:
        if len(args) < 2:
            return []  # a bare command name names no key (and GETKEYS refuses it)
        name = args[0].lower()
        flags, subs = self._command_info(name)
        sub = b""
        if subs and len(args) > 1:
            sub = args[1].lower()
            flags = flags | subs.get(name + b"|" + sub, set())
        if b"movablekeys" in flags:
            if args not in self._movable:
                self._movable[args] = self._getkeys(args)
            return self._movable[args]
        shape = (name, sub, len(args))
        if shape not in self._positions:
            self._positions[shape] = self._fixed_positions(args, 2 if sub else 1)
        return [args[i] for i in self._positions[shape]]

    def _fixed_positions(self, args: tuple[bytes, ...], first: int) -> list[int]:
        placeholders = tuple(b"@i22-arg-%d" % i for i in range(first, len(args)))
        found = self._getkeys(args[:first] + placeholders)
        positions = []
        for key in found:
            if not key.startswith(b"@i22-arg-"):
                raise KeyFinderError(f"GETKEYS {args[:first]!r} answered {key!r}")
            positions.append(int(key[len(b"@i22-arg-") :]))
        return positions

    def close(self) -> None:
        self.conn.disconnect()


# ---------------------------------------------------------------------------------------------
# the audit


@dataclass
class ScriptCall:
    sha: str
    keys: tuple[bytes, ...]
    commands: int = 0


@dataclass(frozen=True)
class Violation:
    sha: str
    command: str
    key: str
    declared: tuple[str, ...]


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


@dataclass
class Audit:
    violations: list[Violation] = field(default_factory=list)
    sources: dict[str, bytes] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)  # per sha, calls that ran commands
    commands: Counter[str] = field(default_factory=Counter)  # per sha, commands the script ran
    command_names: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    orphans: list[MonitorLine] = field(default_factory=list)
    lines: int = 0

    def label(self, sha: str) -> str:
        """The script's first source line no other script has, to tell them apart in a report.

        (Scripts glued from shared Lua pieces all open the same way.)
        """
        src = self.sources.get(sha)
        if src is None:
            return "(source not seen)"
        others = {
            line.strip()
            for other, body in self.sources.items()
            if other != sha
            for line in _text(body).splitlines()
        }
        lines = [line.strip() for line in _text(src).splitlines()]
        meaningful = [ln for ln in lines if len(ln) > 4 and ln not in ("--[[", "else")]
        unique = [ln for ln in meaningful if ln not in others]
        return (unique or meaningful or ["(empty)"])[0][:90]

    def by_script(self) -> dict[str, list[Violation]]:
        grouped: dict[str, list[Violation]] = defaultdict(list)
        for v in self.violations:
            grouped[v.sha].append(v)
        return dict(grouped)

    def without(self, shas: set[str]) -> Audit:
        kept = Audit(sources=self.sources, lines=self.lines, orphans=self.orphans)
        kept.violations = [v for v in self.violations if v.sha not in shas]
        kept.calls = Counter({s: n for s, n in self.calls.items() if s not in shas})
        kept.commands = Counter({s: n for s, n in self.commands.items() if s not in shas})
        for sha, names in self.command_names.items():
            if sha not in shas:
                kept.command_names[sha] = names
        return kept

    def report(self, limit: int = 3) -> str:
        out = []
        for sha, found in sorted(self.by_script().items(), key=lambda kv: -len(kv[1])):
            cmds = Counter(v.command for v in found)
            out.append(
                f"script {sha[:12]} ({self.label(sha)}): {len(found)} undeclared key uses "
                f"in {self.calls[sha]} calls; commands {dict(cmds)}"
            )
            seen: set[tuple[str, str]] = set()
            for v in found:
                if (v.command, v.key) in seen or len(seen) >= limit:
                    continue
                seen.add((v.command, v.key))
                out.append(f"    {v.command} {v.key!r} not in KEYS {list(v.declared)}")
        return "\n".join(out)

    def as_json(self) -> dict[str, Any]:
        return {
            "scripts": {
                sha: {
                    "label": self.label(sha),
                    "calls": self.calls[sha],
                    "commands": dict(self.command_names.get(sha, {})),
                    "violations": len([v for v in self.violations if v.sha == sha]),
                    "source": _text(self.sources.get(sha, b"")),
                }
                for sha in self.calls
            },
            "violations": [v.__dict__ | {"declared": list(v.declared)} for v in self.violations],
        }


def _script_call(line: MonitorLine, audit: Audit) -> ScriptCall:
    cmd, args = line.command, line.args
    if len(args) < 3:
        raise MonitorParseError(f"script call without numkeys: {args!r}")
    if cmd in (b"eval", b"eval_ro"):
        sha = hashlib.sha1(args[1], usedforsecurity=False).hexdigest()
        audit.sources.setdefault(sha, args[1])
    elif cmd in (b"fcall", b"fcall_ro"):
        sha = "function:" + _text(args[1])
    else:
        sha = _text(args[1]).lower()
    numkeys = int(args[2])
    return ScriptCall(sha, tuple(args[3 : 3 + numkeys]))


def _note_source(line: MonitorLine, audit: Audit) -> None:
    if line.command == b"script" and len(line.args) == 3 and line.args[1].lower() == b"load":
        body = line.args[2]
        audit.sources[hashlib.sha1(body, usedforsecurity=False).hexdigest()] = body


def _check_command(line: MonitorLine, call: ScriptCall, finder: KeyFinder, audit: Audit) -> None:
    name = _text(line.args[0]).upper()
    if call.commands == 0:  # counted once it runs: a NOSCRIPT EVALSHA, retried, ran nothing
        audit.calls[call.sha] += 1
    call.commands += 1
    audit.commands[call.sha] += 1
    audit.command_names[call.sha][name] += 1
    if line.command in KEYSPACE_COMMANDS:
        touched = [b"<keyspace: " + b" ".join(line.args) + b">"]
    else:
        touched = finder.keys(line.args)
    declared = set(call.keys)
    for key in touched:
        if key not in declared:
            audit.violations.append(
                Violation(call.sha, name, _text(key), tuple(_text(k) for k in call.keys))
            )


def audit_lines(raw_lines: list[bytes], finder: KeyFinder) -> Audit:
    """Attribute every command a script ran to its call, and check its keys against KEYS."""
    audit = Audit()
    call: ScriptCall | None = None
    for raw in raw_lines:
        line = parse_monitor_line(raw)
        audit.lines += 1
        if line.from_script:
            if call is None:
                audit.orphans.append(line)
            else:
                _check_command(line, call, finder, audit)
            continue
        _note_source(line, audit)
        call = _script_call(line, audit) if line.command in SCRIPT_CALLS else None
    return audit


# ---------------------------------------------------------------------------------------------
# a check of the auditor itself, run through the same MONITOR as the fleet

CONTROL_CLEAN = """
-- i22 control: declared keys only
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZUNIONSTORE', KEYS[2], 2, KEYS[2], KEYS[3])
redis.call('SET', KEYS[3], KEYS[1])
redis.call('MSET', KEYS[1] .. '', 'x')
redis.call('DEL', KEYS[2])
return redis.call('TIME')
"""
CONTROL_DIRTY = """
-- i22 control: builds a key from ARGV and one from a value it read
redis.call('SET', KEYS[1], ARGV[1] .. ':target')
redis.call('SET', ARGV[1] .. ':built', '1')
local read = redis.call('GET', KEYS[1])
redis.call('ZUNIONSTORE', KEYS[1] .. ':z', 1, read)
return redis.call('DEL', read, ARGV[1] .. ':built', KEYS[1] .. ':z')
"""


def run_control_scripts(port: int, tag: str) -> tuple[str, str, list[tuple[str, str]]]:
    """Run a clean and a dirty script; return their shas and the violations the dirty one owes.

    Keys and arguments carry spaces, quotes, backslashes, a newline and non-ASCII bytes, so
    the MONITOR parser and the cache by shape are tested on what real values can hold; an
    argument equal to a key, outside a key position, must not count as a key.
    """
    client = redis.Redis(port=port, socket_timeout=5)
    try:
        odd = f'{tag} "q" \\ \n sp\u00e9\x01'.encode()
        k1, k2, k3 = odd + b":k1", odd + b":k2", odd + b":k3"
        clean = client.register_script(CONTROL_CLEAN)
        clean(keys=[k1, k2, k3], args=[k2, b'v a\\l"ue'])
        pipe = client.pipeline()
        clean(keys=[k3, k2, k1], args=[b"f", b"v"], client=pipe)
        pipe.execute()
        base = odd + b":argv"
        dirty = client.register_script(CONTROL_DIRTY)
        dirty(keys=[k1], args=[base])
        client.delete(k1, k2, k3, base + b":target")
    finally:
        client.close()
    b, z = _text(base), _text(k1) + ":z"
    owed = [
        ("SET", f"{b}:built"),
        ("ZUNIONSTORE", z),
        ("ZUNIONSTORE", f"{b}:target"),
        ("DEL", f"{b}:target"),
        ("DEL", f"{b}:built"),
        ("DEL", z),
    ]
    return str(clean.sha), str(dirty.sha), owed


def check_control(
    audit: Audit, clean_sha: str, dirty_sha: str, owed: list[tuple[str, str]]
) -> None:
    """The auditor passes declared keys and catches exactly the built ones."""
    assert audit.calls[clean_sha] == 2 and audit.calls[dirty_sha] == 1, (
        f"control scripts not seen as script calls: {dict(audit.calls)}"
    )
    assert audit.commands[clean_sha] == 14, f"clean control ran {audit.commands[clean_sha]}"
    assert audit.commands[dirty_sha] == 5, f"dirty control ran {audit.commands[dirty_sha]}"
    clean = [v for v in audit.violations if v.sha == clean_sha]
    assert not clean, f"auditor flagged declared keys: {clean}"
    found = sorted((v.command, v.key) for v in audit.violations if v.sha == dirty_sha)
    assert found == sorted(owed), f"auditor missed or invented violations:\n{found}\n{owed}"


# ---------------------------------------------------------------------------------------------
# subprocesses


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POLLER_", "CELERY_", "PYTEST_"))
        and k.upper() not in {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "PYTHONPATH"}
    }
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    env.update(extra or {})
    return env


class Proc:
    """A subprocess in its own session (its whole group is signalled), logging to a file."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict[str, str], log: Path):
        self.name = name
        self.log_path = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, n: int = 30) -> str:
        lines = self.log().splitlines()[-n:]
        return f"--- {self.name} ({self.log_path}) ---\n" + "\n".join(lines)

    def send(self, sig: int) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
        self.send(sig)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.popen.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # children left in the group


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
        self.proc = Proc("redis-server", argv, workdir, clean_env(), workdir / "redis.log")
        probe = redis.Redis(port=self.port, socket_timeout=2)
        try:
            wait_for(lambda: self._ping(probe), 20, "redis-server to answer", self.proc.tail)
        finally:
            probe.close()

    @staticmethod
    def _ping(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        self.proc.stop(signal.SIGKILL, grace=5)


@contextlib.contextmanager
def monitored_redis(workdir: Path) -> Iterator[tuple[RedisServer, Monitor]]:
    server = RedisServer(workdir)
    monitor = Monitor(server.port)
    try:
        monitor.start()
        yield server, monitor
    finally:
        monitor.close()
        server.stop()


def http_json(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    req.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=10) as resp:
        return json.loads(resp.read())
