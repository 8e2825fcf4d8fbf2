"""A small typed command line for configuration dataclasses.

Every field of a (possibly nested-free) dataclass becomes a ``--field-name`` option whose
type is taken from the annotation: ``int``, ``float``, ``str``, ``bool`` and ``Optional[bool]``
(``--flag`` / ``--no-flag``), ``Optional[X]`` (the word ``none`` gives ``None``) and ``tuple[X, ...]``
(comma separated). Defaults come from the dataclass, so ``--help`` shows them.

    @dataclass
    class Config:
        steps: int = 100
        lr: float = 1e-4

    cfg = parse_config(Config, ["--steps", "10"])   # Config(steps=10, lr=0.0001)
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Mapping, Optional, Sequence, TypeVar

T = TypeVar("T")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """Return (inner type, is_optional) for ``Optional[X]`` / ``X | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _parser_for(tp: Any, name: str):
    """A function turning the option's text into a value of type ``tp``."""
    inner, optional = _unwrap_optional(tp)

    def parse(text: str):
        if optional and text.lower() in ("none", "null", ""):
            return None
        origin = typing.get_origin(inner)
        if origin is tuple:
            item_types = typing.get_args(inner)
            item = item_types[0] if item_types else str
            return tuple(item(part) for part in text.split(",") if part != "")
        if inner is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"--{name}: expected true/false, got {text!r}")
        return inner(text)

    parse.__name__ = getattr(inner, "__name__", str(inner))
    return parse


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type,
                            shown_defaults: Optional[Mapping[str, str]] = None,
                            help_texts: Optional[Mapping[str, str]] = None) -> None:
    """Add one ``--option`` per field of dataclass ``cls`` to ``parser``.

    ``shown_defaults`` replaces the default ``--help`` shows for the fields it names (e.g. a
    value that a preset fills in when the field is left at ``None``); ``help_texts`` replaces
    the help text of the fields it names (e.g. one listing what a registry holds)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        flag = "--" + field.name.replace("_", "-")
        tp = hints[field.name]
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        help_text = (help_texts or {}).get(field.name, field.metadata.get("help", ""))
        if shown_defaults and field.name in shown_defaults:
            default = shown_defaults[field.name]
        if tp is bool or tp == Optional[bool]:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=f"{help_text} (default: {default})")
        else:
            parser.add_argument(flag, dest=field.name, type=_parser_for(tp, field.name),
                                default=argparse.SUPPRESS, metavar=field.name.upper(),
                                help=f"{help_text} (default: {default})")


def config_from_namespace(cls: type[T], namespace: argparse.Namespace, **extra: Any) -> T:
    """Build ``cls`` from the options present in ``namespace`` (absent ones keep defaults)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values = {k: v for k, v in vars(namespace).items() if k in names}
    values.update(extra)
    return cls(**values)


def parse_config(cls: type[T], argv: Sequence[str] | None = None, description: str | None = None,
                 shown_defaults: Optional[Mapping[str, str]] = None,
                 help_texts: Optional[Mapping[str, str]] = None) -> T:
    """Parse ``argv`` into an instance of dataclass ``cls`` (``shown_defaults``, ``help_texts``:
    as for :func:`add_dataclass_arguments`)."""
    parser = argparse.ArgumentParser(description=description or cls.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, cls, shown_defaults, help_texts)
    return config_from_namespace(cls, parser.parse_args(argv))
