"""One way to turn a stage's typed config (a dataclass) into a command line.

Every stage (train, eval, sweep, plan, ...) declares its settings once, as dataclass fields made with
`setting(default, help)`; its CLI is generated here, so a default and its help text are written in one
place only and launchers can only override them.

    @dataclass
    class EvalConfig:
        limit: Optional[int] = setting(None, "Evaluate only the first N prompts.")

    parser = argparse.ArgumentParser(prog="sftbench.eval.run", formatter_class=HelpFormatter)
    names = add_config_arguments(parser, EvalConfig)
    cfg = config_from_namespace(EvalConfig, parser.parse_args(argv), names)

Flag syntax (what the homework's users already type, HF TrainingArguments style):
- booleans: `--flag`, `--flag True|False|1|0|yes|no`, and `--no_flag` for fields that default to True;
- `Optional[...]` fields accept `none` / `null` for None;
- `Literal[...]` fields, or a `choices=[...]` metadata entry, give argparse choices.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import field
from typing import Any, Iterable, Literal


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows every default next to its explanation."""


def setting(default: Any, help: str, **metadata: Any):
    """A config field with its help text (and optional `choices=[...]`, `cli=False` to keep it off the CLI)."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


def str2bool(v: str | bool) -> bool:
    if isinstance(v, bool):
        return v
    s = v.strip().lower()
    if s in ("1", "true", "yes", "y", "on"):
        return True
    if s in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {v!r}")


def _none_or(conv):
    def parse(v: str):
        return None if v.strip().lower() in ("none", "null") else conv(v)

    parse.__name__ = getattr(conv, "__name__", "value")
    return parse


def field_type(cls, f: dataclasses.Field) -> tuple[type, list | None, bool]:
    """(base type, choices or None, optional?) of a dataclass field, from its annotation."""
    t = typing.get_type_hints(cls)[f.name]
    optional = False
    if typing.get_origin(t) is typing.Union or type(t).__name__ == "UnionType":
        args = [a for a in typing.get_args(t) if a is not type(None)]
        optional = len(args) < len(typing.get_args(t))
        t = args[0]
    choices = list(f.metadata.get("choices", [])) or None
    if typing.get_origin(t) is Literal:
        choices = list(typing.get_args(t))
        t = type(choices[0])
    return t, choices, optional


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def add_config_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls, *,
                         skip: Iterable[str] = (), hidden: Iterable[str] = (),
                         defaults: dict[str, Any] | None = None) -> list[str]:
    """Add one `--name` per init field of `cls`; return the names added.

    skip: fields not offered on this CLI; hidden: accepted but left out of --help;
    defaults: per-CLI default overrides (e.g. a preset), still shown by --help.
    """
    skip, hidden, defaults = set(skip), set(hidden), dict(defaults or {})
    names = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip or f.metadata.get("cli") is False:
            continue
        t, choices, optional = field_type(cls, f)
        default = defaults.get(f.name, field_default(f))
        help_ = argparse.SUPPRESS if f.name in hidden else f.metadata.get("help", "")
        if t is bool:
            parser.add_argument(f"--{f.name}", type=str2bool, nargs="?", const=True, default=default,
                                metavar="True|False", help=help_)
            if default is True:
                parser.add_argument(f"--no_{f.name}", dest=f.name, action="store_false", help=argparse.SUPPRESS)
        else:
            conv = _none_or(t) if optional else t
            metavar = "{" + ",".join(map(str, choices)) + "}" if choices else t.__name__.upper()
            parser.add_argument(f"--{f.name}", type=conv, default=default, choices=choices, metavar=metavar,
                                help=help_)
        names.append(f.name)
    return names


def config_from_namespace(cls, ns: argparse.Namespace, names: Iterable[str], **fixed: Any):
    """Build `cls` from the parsed flags `names` (plus `fixed` values for fields not on this CLI)."""
    return cls(**{n: getattr(ns, n) for n in names}, **fixed)


def config_defaults(cls) -> dict[str, Any]:
    """{field: default} of a config class: the one place other stages read a stage's defaults from."""
    return {f.name: field_default(f) for f in dataclasses.fields(cls) if f.init}
