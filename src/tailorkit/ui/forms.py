"""Forms generated from the CLI's config dataclasses: one widget per field, so the page cannot drift from the CLI.

A form is the list of ``FormField`` of a composite config (``SftConfig``, ``RlhfConfig``, ``EvalConfig`` ...).
Widget values are plain text, booleans or choice strings (no gradio here): ``to_widget`` / ``from_widget``
convert one field, ``settings_from_widgets`` / ``widgets_from_settings`` a whole form. An empty box means
the field's default. Settings are the flat ``{argument: value}`` mapping the CLI and YAML files take.
"""

from __future__ import annotations

import json
import shlex
import typing
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields

import yaml

from ..config.fields import concern_fields
from ..config.loading import base_type, build_config, coerce, flatten_layout
from ..errors import ConfigError

UNSET = ""  # the widget value of "leave the default"


@dataclass(frozen=True)
class FormField:
    """One setting as a widget: its kind decides the widget (checkbox, dropdown or text box)."""

    name: str
    concern: str
    kind: str  # bool | choice | int | float | text | list | json
    default: object
    help: str
    choices: tuple[str, ...] = ()  # choice: the accepted values as text (UNSET for an optional one)
    field: object = None  # the dataclass field (its metadata is what the CLI parses with)
    annotation: object = None


def form_fields(cls, exclude: tuple[str, ...] = ()) -> list[FormField]:
    """Every field of the composite config ``cls`` (in declaration order), except ``exclude``."""
    out = []
    for name, (concern, f, tp) in concern_fields(cls).items():
        if name in exclude:
            continue
        default = f.default_factory() if callable(f.default_factory) else f.default
        out.append(FormField(name=name, concern=concern, kind=_kind(f, tp), default=default,
                             help=f.metadata.get("help", ""), choices=_choices(f, tp), field=f, annotation=tp))
    return out


def _kind(f, tp) -> str:
    kind = base_type(tp)
    if f.metadata.get("choices") or (kind is bool and _optional(tp)):
        return "choice"
    return {bool: "bool", int: "int", float: "float", list: "list", dict: "json"}.get(kind, "text")


def _optional(tp) -> bool:
    return type(None) in typing.get_args(tp)


def _choices(f, tp) -> tuple[str, ...]:
    values = f.metadata.get("choices")
    if values is None and base_type(tp) is bool:
        values = (None, True, False)  # an optional flag: unset, true, false
    if values is None:
        return ()
    return tuple(UNSET if v is None else _text(v) for v in values)


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def to_widget(ff: FormField, value):
    """The widget value showing ``value`` (a setting of this field)."""
    if ff.kind == "bool":
        return bool(value)
    if value is None:
        return UNSET
    if ff.kind == "list":
        return "\n".join(str(v) for v in value)  # one item a line: paths may hold spaces
    if ff.kind == "json":
        return value if isinstance(value, str) else json.dumps(value)
    if ff.kind == "float":
        return repr(float(value))  # repr round-trips exactly (1e-05, 0.1)
    return _text(value)


def from_widget(ff: FormField, value, source: str = "form"):
    """The setting a widget value stands for (an empty box: the field's default), checked as the CLI checks it."""
    if ff.kind == "bool":
        return bool(value)
    text = "" if value is None else str(value)
    if ff.kind == "list":
        items = [line.strip() for line in text.splitlines() if line.strip()]
        return items if items else _copy(ff.default)
    if not text.strip():
        return _copy(ff.default)
    if ff.kind == "json":
        if not text.lstrip().startswith(("{", "[")):  # a JSON file's path (fsdp_config): the config reads it, as
            return text.strip()                       # it does the CLI's
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{source}: {ff.name}: not valid JSON: {e}") from None
    return coerce(text.strip(), ff.field, ff.annotation, source)


def _copy(value):
    return type(value)(value) if isinstance(value, (list, dict)) else value


def settings_from_widgets(fields: list[FormField], values: list, source: str = "form") -> dict:
    """The form's settings that differ from their defaults, in field order (what the YAML and flags carry)."""
    if len(values) != len(fields):
        raise ValueError(f"{len(values)} widget values for {len(fields)} fields")
    out = {}
    for ff, value in zip(fields, values):
        setting = from_widget(ff, value, source)
        if setting != ff.default:
            out[ff.name] = setting
    return out


def widgets_from_settings(fields: list[FormField], settings: dict, source: str = "settings") -> list:
    """Widget values showing ``settings`` (flat or nested layout); other fields show their defaults.

    Unknown keys are an error naming them, as the CLI reports them.
    """
    settings = flatten_layout(dict(settings), source)
    by_name = {ff.name: ff for ff in fields}
    aliases = {a: ff.name for ff in fields for a in ff.field.metadata.get("aliases", ())}
    resolved = {}
    for key, value in settings.items():
        name = aliases.get(key, key)
        if name not in by_name:
            raise ConfigError(f"{source}: {key!r} is not a setting of this form")
        ff = by_name[name]
        resolved[name] = coerce(value, ff.field, ff.annotation, source)
    return [to_widget(ff, resolved.get(ff.name, ff.default)) for ff in fields]


def build(cls, settings: dict, source: str = "form"):
    """The typed config the CLI would build from these settings (every check of the dataclasses runs)."""
    return build_config(cls, settings, source)


def build_concern(cls, concern: str, settings: dict):
    """One concern of ``cls`` (e.g. the GenerationArgs of InferConfig) from the settings that belong to it."""
    factory = next(f.default_factory for f in dataclass_fields(cls) if f.name == concern)
    names = {name for name, (c, _, _) in concern_fields(cls).items() if c == concern}
    return factory(**{k: v for k, v in settings.items() if k in names})


def to_yaml(settings: dict) -> str:
    """The settings as a YAML file the CLI reads (`tailorkit <verb> file.yaml`)."""
    return yaml.safe_dump(settings, sort_keys=False, allow_unicode=True)


def read_yaml_text(text: str, source: str = "YAML") -> dict:
    """Settings from YAML text (flat or the nested tutorial layout); errors name the source."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of settings, got {type(data).__name__}")
    return data


def command_flags(fields: list[FormField], settings: dict) -> list[str]:
    """The flags that give ``settings`` on the command line (argv items, not quoted)."""
    by_name = {ff.name: ff for ff in fields}
    argv = []
    for name, value in settings.items():
        ff = by_name[name]
        argv.append(f"--{name}")
        if ff.kind == "list":
            argv += [str(v) for v in value]
        elif ff.kind == "json":
            argv.append(value if isinstance(value, str) else json.dumps(value))
        else:
            argv.append(_text(value))
    return argv


def shell_command(argv: list[str]) -> str:
    """A command line to copy into a shell."""
    return " ".join(shlex.quote(a) for a in argv)
