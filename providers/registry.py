"""Provider names mapped to "module:Class", imported on first use, like kombu's transport aliases.

Built-in adapters are listed below; third-party packages add theirs through the entry-point group
`export_poller.providers` (name = "package.module:Class"). A typo gets a did-you-mean error.
"""

from __future__ import annotations

import difflib
import importlib
from functools import cache
from importlib.metadata import entry_points

from export_poller.providers.base import Provider
from export_poller.providers.errors import UnknownProvider

ENTRY_POINT_GROUP = "export_poller.providers"

BUILTIN: dict[str, str] = {
    "chaossearch": "export_poller.providers.chaossearch:ChaosSearch",
    "saymon": "export_poller.providers.saymon:Saymon",
    "biodatacatalyst": "export_poller.providers.sevenbridges:BioDataCatalyst",
    "cgc": "export_poller.providers.sevenbridges:CGC",
    "cometly": "export_poller.providers.cometly:Cometly",
}

_extra: dict[str, str | type[Provider]] = {}


@cache
def _plugins() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _targets() -> dict[str, str | type[Provider]]:
    return {**BUILTIN, **_plugins(), **_extra}


def provider_names() -> list[str]:
    return sorted(_targets())


def register(name: str, target: str | type[Provider]) -> None:
    """Add a provider at run time (tests, embedding applications)."""
    _extra[name.lower()] = target
    get_provider_class.cache_clear()


def unregister(name: str) -> None:
    _extra.pop(name.lower(), None)
    get_provider_class.cache_clear()


@cache
def get_provider_class(name: str) -> type[Provider]:
    """Resolve a provider name, importing its module only now."""
    targets = _targets()
    target = targets.get(name.lower()) if isinstance(name, str) else None
    if target is None:
        close = difflib.get_close_matches(str(name).lower(), list(targets), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownProvider(
            f"unknown provider {name!r}{hint} (known: {', '.join(sorted(targets))})"
        )
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise UnknownProvider(f"{target!r} is not a Provider subclass")
    return cls
