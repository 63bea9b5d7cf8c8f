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
- `Literal[...]` fields, or a `choices=[...]` metadata entry, give argparse choices;
- a number after a flag may be negative (`--learning_rate -1e-3` is a value, left to the config's check()).

Composed configs (LitGPT's args.py style): a field made with `section(SubConfig, help, prefix=...)` holds a
sub-config; its fields become flags `--{prefix}{name}` (grouped in --help under the section's help), and
`Composed` gives the outer config flat access (`cfg.learning_rate` is `cfg.optim.learning_rate`), a flat
`to_dict()` and `from_dict()`.  Flat names must be unique (flat_fields() raises otherwise).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import re
import typing
from dataclasses import field
from typing import Any, Iterable, Literal, NamedTuple


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows every default next to its explanation."""


def setting(default: Any, help: str, **metadata: Any):
    """A config field with its help text (and optional `choices=[...]`, `cli=False` to keep it off the CLI,
    `none_is_text=True` for an Optional field whose value `none` means something else than unset)."""
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


# Any number, negative ones included (argparse's own pattern misses `-1e-3`, `-inf`, `-.5e2`), so that a value
# after a flag is read as a value, never as an unknown option; no config flag looks like a negative number.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser that reads `--flag -1e-3` as a value (see NEGATIVE_NUMBER), --help with defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        accept_negative_numbers(self)


def accept_negative_numbers(parser: argparse.ArgumentParser) -> None:
    """Make `parser` read any negative number after a flag as its value (argparse's matcher is a private
    attribute, stable from 3.8 to 3.13; 3.13's own already accepts scientific notation)."""
    parser._negative_number_matcher = NEGATIVE_NUMBER


def section(cls, help: str, *, prefix: str = "", skip: Iterable[str] = (), defaults: dict[str, Any] | None = None,
            helps: dict[str, str] | None = None, help_names: dict[str, str] | None = None):
    """A config field holding a sub-config `cls` (composed, not copied).

    prefix: its flags are `--{prefix}{field}` (and so are the `--field` mentions in its help texts);
    skip: its fields not offered here (not on the CLI, not in to_dict, not forwarded; they keep cls's default);
    defaults: this composition's defaults for some of its fields, stated once (e.g. `{"fraction": 0.0}`);
    helps: this composition's help for some fields; help_names: `--field` mentions of skipped fields that read as
    another flag here (e.g. `{"model": "model_name_or_path"}`).
    """
    defaults = dict(defaults or {})
    meta = {"help": help, "section": cls, "prefix": prefix, "skip": tuple(skip), "defaults": defaults,
            "helps": dict(helps or {}), "help_names": dict(help_names or {})}
    return field(default_factory=lambda: cls(**defaults), metadata=meta)


class Leaf(NamedTuple):
    """One flat setting of a (composed) config: `path` of attribute names from the outer config, the dataclass
    that declares it, its field, its default in this composition, its help text, and its section's title."""

    path: tuple[str, ...]
    owner: type
    field: dataclasses.Field
    default: Any
    help: str
    group: str | None


@functools.lru_cache(maxsize=None)
def flat_fields(cls) -> dict[str, Leaf]:
    """{flat name: Leaf} of every init field of `cls`, sub-configs (section fields) walked; ValueError if two
    settings share a flat name."""
    out: dict[str, Leaf] = {}
    _walk(cls, (), "", (), {}, {}, {}, None, out)
    clash = [f.name for f in dataclasses.fields(cls) if f.metadata.get("section") is not None and f.name in out]
    if clash:
        raise ValueError(f"{cls.__name__}: section name(s) {clash} are also setting names")
    return out


def _walk(cls, path, prefix, skip, defaults, helps, help_names, group, out) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip:
            continue
        sub = f.metadata.get("section")
        if sub is not None:
            _walk(sub, path + (f.name,), prefix + f.metadata["prefix"], f.metadata["skip"], f.metadata["defaults"],
                  f.metadata["helps"], f.metadata["help_names"], f.metadata["help"], out)
            continue
        name = prefix + f.name
        if name in out:
            raise ValueError(f"{cls.__name__}: flat name {name!r} is used twice ({'.'.join(out[name].path)} and "
                             f"{'.'.join(path + (f.name,))})")
        text = helps.get(f.name, f.metadata.get("help", ""))
        if prefix or help_names:  # the sub-config's own `--field` mentions, as this CLI spells them
            text = re.sub(r"--(\w+)", lambda m: "--" + (help_names.get(m[1]) or (prefix + m[1] if m[1] in names else m[1])), text)
        out[name] = Leaf(path + (f.name,), cls, f, defaults[f.name] if f.name in defaults else field_default(f),
                         text, group)


def add_config_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls, *,
                         skip: Iterable[str] = (), hidden: Iterable[str] = (),
                         defaults: dict[str, Any] | None = None) -> list[str]:
    """Add one `--name` per flat setting of `cls` (sub-configs walked, see section()); return the names added.

    skip: flat names not offered on this CLI; hidden: accepted but left out of --help;
    defaults: per-CLI default overrides (e.g. a preset), still shown by --help.
    Given a parser, each sub-config's flags form one --help group; given a group, they all go in it.
    """
    skip, hidden, defaults = set(skip), set(hidden), dict(defaults or {})
    if isinstance(parser, argparse.ArgumentParser):
        accept_negative_numbers(parser)
    groups: dict[str, Any] = {}
    names = []
    for name, leaf in flat_fields(cls).items():
        f = leaf.field
        if name in skip or f.metadata.get("cli") is False:
            continue
        target = parser
        if leaf.group and isinstance(parser, argparse.ArgumentParser):
            if leaf.group not in groups:
                title, _, desc = leaf.group.partition(": ")
                groups[leaf.group] = parser.add_argument_group(title, desc or None)
            target = groups[leaf.group]
        t, choices, optional = field_type(leaf.owner, f)
        default = defaults.get(name, leaf.default)
        help_ = argparse.SUPPRESS if name in hidden else leaf.help
        if t is bool:
            target.add_argument(f"--{name}", type=str2bool, nargs="?", const=True, default=default,
                                metavar="True|False", help=help_)
            if default is True:
                target.add_argument(f"--no_{name}", dest=name, action="store_false", help=argparse.SUPPRESS)
        else:
            conv = _none_or(t) if optional and not f.metadata.get("none_is_text") else t
            metavar = "{" + ",".join(map(str, choices)) + "}" if choices else t.__name__.upper()
            target.add_argument(f"--{name}", type=conv, default=default, choices=choices, metavar=metavar,
                                help=help_)
        names.append(name)
    return names


def config_from_flat(cls, values: dict[str, Any], *, unknown: str = "error"):
    """Build `cls` (sub-configs included) from {flat name: value}; unset settings keep their defaults.

    unknown: "error" (TypeError naming them, as a dataclass would) or "ignore" (e.g. a saved file's extra keys).
    """
    leaves = flat_fields(cls)
    extra = [k for k in values if k not in leaves]
    if extra and unknown == "error":
        raise TypeError(f"{cls.__name__}: unknown setting(s) {', '.join(extra)}")
    kwargs: dict[tuple[str, ...], dict[str, Any]] = {(): {}}
    for name, value in values.items():
        if name in leaves:
            path = leaves[name].path
            kwargs.setdefault(path[:-1], {})[path[-1]] = value
    return _build(cls, (), kwargs)


def _build(cls, path: tuple[str, ...], kwargs: dict[tuple[str, ...], dict[str, Any]]):
    own = dict(kwargs.get(path, {}))
    for f in dataclasses.fields(cls):
        sub = f.metadata.get("section")
        if sub is not None and any(p[: len(path) + 1] == path + (f.name,) for p in kwargs):
            defaults = f.metadata["defaults"]
            inner = {**kwargs, path + (f.name,): {**defaults, **kwargs.get(path + (f.name,), {})}}
            own[f.name] = _build(sub, path + (f.name,), inner)
    return cls(**own)


def config_from_namespace(cls, ns: argparse.Namespace, names: Iterable[str], **fixed: Any):
    """Build `cls` from the parsed flags `names` (plus `fixed` values for settings not on this CLI; flat names)."""
    return config_from_flat(cls, {**{n: getattr(ns, n) for n in names}, **fixed})


def config_defaults(cls) -> dict[str, Any]:
    """{flat name: default} of a config class: the one place other stages read a stage's defaults from."""
    return {name: leaf.default for name, leaf in flat_fields(cls).items()}


@functools.lru_cache(maxsize=None)
def _forwarded(cls) -> dict[str, tuple[str, ...]]:
    """{flat name: attribute path} of the settings that live in a sub-config of `cls`."""
    return {n: leaf.path for n, leaf in flat_fields(cls).items() if len(leaf.path) > 1}


class Composed:
    """Mixin for a dataclass made of sections (see section()): flat access to its sub-configs' settings.

    `cfg.learning_rate` reads and `cfg.learning_rate = x` writes `cfg.optim.learning_rate`; `Cls(learning_rate=x)`
    and `dataclasses.replace(cfg, learning_rate=x)` accept flat names; to_dict() is the flat {name: value} that
    checkpoints store, from_dict() reads it back (keys it does not know are ignored: a saved file has extras).
    """

    @classmethod
    def _forwarded(cls) -> dict[str, tuple[str, ...]]:
        return _forwarded(cls)

    def __getattr__(self, name: str) -> Any:  # only called when normal lookup fails
        path = type(self)._forwarded().get(name)
        if path is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        obj = self
        for p in path:
            obj = getattr(obj, p)
        return obj

    def __setattr__(self, name: str, value: Any) -> None:
        path = type(self)._forwarded().get(name)
        if path is None:
            object.__setattr__(self, name, value)
            return
        obj = self
        for p in path[:-1]:
            obj = getattr(obj, p)
        setattr(obj, path[-1], value)

    def to_dict(self) -> dict[str, Any]:
        """{flat name: value}: the flags that reproduce this config."""
        return {name: getattr(self, name) for name in flat_fields(type(self))}

    @classmethod
    def from_dict(cls, flat: dict[str, Any]):
        """The config of a to_dict() (e.g. a checkpoint's sft_config.json); unknown keys are ignored."""
        return config_from_flat(cls, flat, unknown="ignore")


def composed(cls):
    """Class decorator, above @dataclass: `cls(**kwargs)` also takes flat names of its sub-configs' settings."""
    init = cls.__init__
    nested = {f.name for f in dataclasses.fields(cls)}
    sections = {f.name for f in dataclasses.fields(cls) if f.metadata.get("section") is not None}

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for k in sections & set(kwargs):  # value semantics: dataclasses.replace(cfg, ...) must not share them
            kwargs[k] = copy.copy(kwargs[k])
        flat = {k: kwargs.pop(k) for k in list(kwargs) if k not in nested}
        unknown = [k for k in flat if k not in cls._forwarded()]
        if unknown:
            raise TypeError(f"{cls.__name__}.__init__() got unexpected keyword argument(s) {', '.join(unknown)}")
        init(self, *args, **kwargs)
        for k, v in flat.items():
            setattr(self, k, v)

    cls.__init__ = __init__
    return cls
