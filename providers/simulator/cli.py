"""Command-line options of `python -m export_poller.providers.simulator`, as `SimulatorOptions`.

Repeating `--token`, `--user` or `--aws-key` configures several tenants; giving any of them
replaces that default credential rather than adding to it, so a run can exclude the default.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from export_poller.providers.simulator.fields import SpecError
from export_poller.providers.simulator.options import (
    DEFAULT_ACCESS_KEY,
    DEFAULT_PASSWORD,
    DEFAULT_REGION,
    DEFAULT_SECRET_KEY,
    DEFAULT_TOKEN,
    DEFAULT_USER,
    RateLimit,
    SimulatorOptions,
)

# The status call of each provider, as the simulator serves it (the provider's real path).
STATUS_ROUTES = (
    ("chaossearch", "POST /bulkexport/status", "AWS SigV4 (service s3)"),
    ("saymon", "GET  /node/api/bulk/{id}/status", "HTTP basic"),
    ("biodatacatalyst", "GET  /v2/storage/exports/{id}", "X-SBG-Auth-Token"),
    ("cgc", "POST /v2/bulk/storage/exports/get", "X-SBG-Auth-Token"),
    ("cometly", "GET  /public-api/v1/events/exports/{id}", "Authorization: Bearer"),
)
CONTROL_ROUTES = (
    ("POST /_sim/jobs", 'create a job: {"provider", "outcome", "running_polls", "faults", ...}'),
    ("POST /_sim/jobs/bulk", "create several: [spec, ...]"),
    ("GET  /_sim/jobs/{provider}/{id}", "a job's state and bookkeeping"),
    ("GET  /_sim/stats", "requests per provider and credential, busiest rate window"),
    ("POST /_sim/faults", 'global faults: {"rate", "kinds", "providers"}'),
    ("GET  /_sim/faults", "the global fault setting"),
    ("POST /_sim/reset", "forget jobs, counters, windows and faults"),
    ("GET  /_sim/health", '{"ok": true}'),
)


def banner_data(url: str, options: SimulatorOptions) -> dict[str, Any]:
    """What a user needs to point accounts at the simulator: URLs, logins, control routes."""
    return {
        "url": url,
        "status": [
            {"provider": p, "route": r.replace("  ", " "), "base_url": url, "auth": a}
            for p, r, a in STATUS_ROUTES
        ],
        "logins": {
            "tokens": list(options.tokens),
            "users": dict(options.users),
            "aws_keys": dict(options.aws_keys),
            "region": options.region,
        },
        "control": [{"route": r.replace("  ", " "), "does": d} for r, d in CONTROL_ROUTES],
    }


def banner(url: str, options: SimulatorOptions) -> str:
    """The start-up banner; its first line ends with the URL, as scripts expect."""
    users = ", ".join(f"{u}:{p}" for u, p in options.users.items())
    keys = ", ".join(f"{a}:{s}" for a, s in options.aws_keys.items())
    lines = [f"provider simulator listening on {url}", "", "status APIs (base URL for all):"]
    lines += [f"  {p:<16} {r:<45} {a}" for p, r, a in STATUS_ROUTES]
    lines += [
        "",
        "logins (fake, for local tests only):",
        f"  token (biodatacatalyst, cgc, cometly): {', '.join(options.tokens)}",
        f"  saymon basic auth user:password: {users}",
        f"  chaossearch access:secret key: {keys}  region {options.region}",
        "",
        "control API (no auth, local only):",
    ]
    lines += [f"  {r:<34} {d}" for r, d in CONTROL_ROUTES]
    lines += ["", f'e.g. curl -s -X POST {url}/_sim/jobs -d \'{{"provider": "cometly"}}\'']
    return "\n".join(lines)


def build_parser(
    prog: str = "python -m export_poller.providers.simulator",
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the status APIs of ChaosSearch, SAYMON, BioDataCatalyst, CGC and "
        "Cometly with simulated export jobs, faults and rate limits. The start-up banner lists "
        "the base URL, the logins and the control API's routes.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    add("--port", type=int, default=8900, help="port; 0 picks a free one (default: %(default)s)")
    add("--threads", type=int, default=8, help="waitress worker threads (default: %(default)s)")
    add("--token", action="append", help=f"valid API token (default: {DEFAULT_TOKEN})")
    add("--user", action="append", metavar="NAME:PASSWORD", help="SAYMON basic-auth user")
    add("--aws-key", action="append", metavar="ACCESS:SECRET", help="ChaosSearch AWS key pair")
    add("--region", default=DEFAULT_REGION, help="ChaosSearch SigV4 region (default: %(default)s)")
    add(
        "--cometly-limit",
        default="30/60",
        metavar="N/SECONDS",
        help="Cometly requests per window per API key (default: %(default)s; 0 disables)",
    )
    add(
        "--sbg-limit",
        default="1000/300",
        metavar="N/SECONDS",
        help="Seven Bridges requests per window per token (default: %(default)s; 0 disables)",
    )
    add("--seed", type=int, default=0, help="seed of the fault generator (default: 0)")
    add("--script", type=Path, help='JSON file: a list of jobs, or {"jobs": [...], "faults": {}}')
    add("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add("--json", action="store_true", help="print the start-up banner as one line of JSON")
    return parser


def _pairs(values: list[str] | None, default: dict[str, str], what: str) -> dict[str, str]:
    if not values:
        return default
    pairs: dict[str, str] = {}
    for value in values:
        name, sep, secret = value.partition(":")
        if not sep or not name or not secret:
            raise ValueError(f"{what} must look like NAME:SECRET, got {value!r}")
        pairs[name] = secret
    return pairs


def read_script(path: Path) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
    """The jobs and global faults of a script file."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, list):
        return tuple(data), None
    if isinstance(data, dict) and set(data) <= {"jobs", "faults"}:
        jobs = data.get("jobs", [])
        if isinstance(jobs, list):
            return tuple(jobs), data.get("faults")
    raise SpecError(f'{path}: expected a list of jobs or {{"jobs": [...], "faults": {{...}}}}')


def options_from_args(args: argparse.Namespace) -> SimulatorOptions:
    jobs, faults = read_script(args.script) if args.script else ((), None)
    return SimulatorOptions(
        tokens=tuple(args.token or (DEFAULT_TOKEN,)),
        users=_pairs(args.user, {DEFAULT_USER: DEFAULT_PASSWORD}, "--user"),
        aws_keys=_pairs(args.aws_key, {DEFAULT_ACCESS_KEY: DEFAULT_SECRET_KEY}, "--aws-key"),
        region=args.region,
        cometly_limit=RateLimit.parse(args.cometly_limit),
        sbg_limit=RateLimit.parse(args.sbg_limit),
        seed=args.seed,
        jobs=jobs,
        faults=faults,
    )
