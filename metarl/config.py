"""Typed configs: dataclasses whose fields carry help text and bounds.

Every agent and env config is a dataclass built with `option(...)`. The same metadata
drives `--set key=value` parsing, validation with one-line errors, `--help` listings and
the TOML file saved with a run.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, get_type_hints

from metarl.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def option(default, help: str, *, ge=None, gt=None, le=None, lt=None, choices=None):
    """A config field with its help text and bounds (checked by `validate`)."""
    meta = dict(help=help, ge=ge, gt=gt, le=le, lt=lt, choices=choices)
    return dataclasses.field(default=default, metadata=meta)


def _coerce(text: str, typ: type, key: str):
    """Parse a `--set` string into the field's type, or raise a one-line UserError."""
    try:
        if typ is bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            value = float(text)  # accepts 1e6
            if not value.is_integer():
                raise ValueError
            return int(value)
        if typ is float:
            return float(text)
        return typ(text)
    except (ValueError, TypeError):
        raise UserError(f"{key}={text!r} is not a valid {typ.__name__}; give e.g. {key}={_example(typ)}") from None


def _example(typ):
    return {int: "10", float: "0.001", bool: "true", str: "text"}.get(typ, "...")


def validate(cfg, section: str) -> None:
    """Check every field against its bounds; raise one UserError naming the first bad one."""
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{section}.{f.name}"
        typ = hints[f.name]
        if typ not in (int, float, bool, str):  # a developer's error: --set and the saved TOML take only these
            raise TypeError(f"{type(cfg).__name__}.{f.name} is a {typ}; config options are int, float, bool or str "
                            f"(a list: a comma-separated str)")
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            setattr(cfg, f.name, value)
        if not isinstance(value, typ):
            raise UserError(f"{key} must be a {typ.__name__}, got {value!r}")
        if typ is int and isinstance(value, bool):
            raise UserError(f"{key} must be an int, got {value!r}")
        if typ is float and not math.isfinite(value):
            raise UserError(f"{key} must be a finite number, got {value!r}")
        m = f.metadata
        for bound, ok, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                                ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
            b = m.get(bound)
            if b is not None and not ok(value, b):
                raise UserError(f"{key} must be {word} {b}, got {value!r}; set e.g. --set {key}={f.default}")
        if m.get("choices") and value not in m["choices"]:
            raise UserError(f"{key} must be one of {', '.join(map(str, m['choices']))}, got {value!r}")
    check = getattr(cfg, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as e:
            raise UserError(f"{section}: {e}") from None


def build(cls, values: dict[str, Any], section: str):
    """Instantiate dataclass `cls` from `values` (strings from --set, or typed from TOML)."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise UserError(f"unknown option {section}.{key}; valid {section} options: {', '.join(sorted(names))}")
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}") if isinstance(value, str) and hints[key] is not str else value
    cfg = cls(**kwargs)
    validate(cfg, section)
    return cfg


def as_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def describe(cls, section: str) -> str:
    """Help text listing every option of a config class with its default: its own options first,
    then those it inherits (e.g. metarl.sim.options.SimulationOptions)."""
    inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)}
    lines = []
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name in inherited):
        lines.append(f"  {section}.{f.name} = {f.default!r}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def parse_sets(items: list[str]) -> dict[str, dict[str, str]]:
    """`["env.k=10", "agent.lr=1e-3"]` -> {"env": {"k": "10"}, "agent": {"lr": "1e-3"}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UserError(f"--set {item!r} must look like SECTION.KEY=VALUE, e.g. --set env.k=10 or --set agent.lr=3e-4")
        key, value = item.split("=", 1)
        section, name = key.strip().split(".", 1)
        if section not in ("env", "agent", "run"):
            raise UserError(f"--set {item!r}: section must be env, agent or run, got {section!r}")
        out.setdefault(section, {})[name.strip()] = value.strip()
    return out


def load_toml(path: str | Path) -> dict[str, dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist; check the path given to --config")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {p} is not valid TOML ({e}); fix the file") from None
    for section in data:
        if section not in ("env", "agent", "run", "experiment") or not isinstance(data[section], dict):
            raise UserError(f"config file {p}: unknown section [{section}]; use [run], [env] and [agent]")
    data.pop("experiment", None)  # experiment metadata (paper figures); not a training option
    return data


def dump_toml(data: dict[str, dict[str, Any]]) -> str:
    """Write a two-level dict of scalars as TOML (enough for our flat configs)."""
    def fmt(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        raise TypeError(f"cannot write {v!r} to TOML")

    parts = []
    for section, values in data.items():
        parts.append(f"[{section}]")
        parts += [f"{k} = {fmt(v)}" for k, v in values.items()]
        parts.append("")
    return "\n".join(parts)
