"""mkdocs hook: the settings and CLI references are rendered from the code at build time.

A page holding the marker `<!-- settings-reference -->` gets a table of every field of the
pydantic `Settings` model (and of `AccountSettings`, per account), read from the model itself:
env var, type, default, constraints and the field's `description`. `<!-- cli-reference -->`
gets every `export-poller` command's `--help`. So neither can drift from the code, and a field
without a description fails the strict build.

A figure `![alt](img/NAME.svg "COMMAND")` whose file a bench script has not drawn yet (the heavy
benches run by hand on a quiet machine) is shown as a note giving COMMAND, so the page still
builds and says how to draw it.

The tutorial lists the trial profile's values as text, so it reads the same as a file in the
repository; a code span opening `POLLER_BACKOFF_INITIAL=` must list exactly the profile in
`config/settings.py`, or the build fails. And the two references, generated at build time,
are empty markers in the files: `python docs/hooks.py settings` (or `cli`) prints them as the
site shows them, for a reader of the files without the built site.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
import click
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

SETTINGS_MARKER = "<!-- settings-reference -->"
CLI_MARKER = "<!-- cli-reference -->"
_VARIABLE = re.compile(r"POLLER_[A-Z_<>]+[A-Z>]")
_BOUNDS = (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"))


_TRIAL_LIST = re.compile(r"`(POLLER_BACKOFF_INITIAL=[^`]*)`")
_FIGURE = re.compile(r'!\[(?P<alt>[^\]]*)\]\((?P<src>img/[^ )]+) "(?P<command>[^"]+)"\)')


def on_page_markdown(markdown: str, page: Any, config: Any, **_: Any) -> str:
    folder = (Path(config["docs_dir"]) / page.file.src_path).parent
    markdown = _FIGURE.sub(lambda m: _figure(m, folder), markdown)
    _check_trial_lists(markdown, page.file.src_path)
    if SETTINGS_MARKER in markdown:
        markdown = markdown.replace(SETTINGS_MARKER, settings_reference())
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return markdown


def _figure(match: re.Match[str], folder: Path) -> str:
    if (folder / match["src"]).is_file():
        return match[0]
    return (
        f'!!! info "Figure not drawn yet: {match["alt"]}"\n'
        f"    Draw it with `.venv/bin/python {match['command']}`.\n"
    )


def trial_profile() -> str:
    """The trial profile's values as the pages write them."""
    from export_poller.config.settings import PROFILES

    return ", ".join(f"POLLER_{k.upper()}={v:g}" for k, v in PROFILES["trial"].items())


def _check_trial_lists(markdown: str, where: str) -> None:
    for listed in _TRIAL_LIST.findall(markdown):
        if listed != trial_profile():
            raise ValueError(f"{where}: the trial profile is `{trial_profile()}`, not `{listed}`")


def settings_reference() -> str:
    from export_poller.config.settings import AccountSettings, Settings

    service = [f for f in Settings.model_fields if f != "accounts"]
    lines = ["| variable | type | default | what it does |", "|---|---|---|---|"]
    lines += [_row(Settings, name, f"POLLER_{name.upper()}") for name in service]
    lines += ["", "### Accounts", "", _description(Settings, "accounts"), ""]
    lines += ["| variable | type | default | what it does |", "|---|---|---|---|"]
    lines += [
        _row(AccountSettings, name, f"POLLER_ACCOUNTS__<NAME>__{name.upper()}")
        for name in AccountSettings.model_fields
    ]
    return "\n".join(lines) + "\n"


def _row(model: type[BaseModel], name: str, variable: str) -> str:
    field = model.model_fields[name]
    cells = [f"`{variable}`", _type(field), _default(field), _description(model, name)]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _description(model: type[BaseModel], name: str) -> str:
    description = model.model_fields[name].description
    if not description:
        raise ValueError(f"{model.__name__}.{name} has no Field(description=...)")
    return _VARIABLE.sub(r"`\g<0>`", description)


def _type(field: FieldInfo) -> str:
    """`float > 0`, `text (optional)`, `secret`: what a user may write, not Python's name."""
    annotation, bounds = field.annotation, list(field.metadata)
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional, annotation = True, args[0]
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *extra = typing.get_args(annotation)
        bounds += [m for info in extra if isinstance(info, FieldInfo) for m in info.metadata]
    name = _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))
    limits = [
        f"{sign} {_number(getattr(bound, attribute))}"
        for bound in bounds
        for attribute, sign in _BOUNDS
        if isinstance(bound, annotated_types.BaseMetadata) and hasattr(bound, attribute)
    ]
    name = " ".join([name, ", ".join(limits)]) if limits else name
    return f"{name} (optional)" if optional else name


_TYPE_NAMES: dict[Any, str] = {
    str: "text",
    float: "number",
    int: "integer",
    bool: "true / false",
    SecretStr: "secret",
}


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "none"
    if field.default is PydanticUndefined:
        return "required"
    if field.default is None:
        return "unset"
    shown = _number(field.default)
    return f"`{shown.lower() if isinstance(field.default, bool) else shown}`"


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def cli_reference() -> str:
    from export_poller.cli import main

    group = typing.cast(click.Group, main)
    parts = []
    with click.Context(group, info_name="export-poller") as root:
        for name in group.list_commands(root):
            command = group.get_command(root, name)
            assert command is not None
            with click.Context(command, parent=root, info_name=name) as ctx:
                parts += [f"### `export-poller {name}`", "", "```text", command.get_help(ctx)]
                parts += ["```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    import sys

    which = {"settings": settings_reference, "cli": cli_reference}
    if len(sys.argv) != 2 or sys.argv[1] not in which:
        sys.exit("usage: python docs/hooks.py settings|cli")
    print(which[sys.argv[1]]())
