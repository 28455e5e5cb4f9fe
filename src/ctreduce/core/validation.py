"""Settings checked into one line: pydantic's reports as ``key=value: what is allowed``, layers of settings merged,
``key=value`` overrides read. Imports pydantic (and, when used, OmegaConf and YAML), never torch or numpy, so a
mistake is found in a fraction of a second. ``ctreduce.config`` holds the settings these check.

A settings model may hold sections of other models that are not fields (``PretrainConfig``'s method sections):
it then lists them in a classmethod ``sections()`` (name -> model), so that an unknown key inside one is named
with the keys it could have been.
"""

from __future__ import annotations

import difflib
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError

Settings = TypeVar("Settings", bound=BaseModel)


class SettingsError(ValueError):
    """Settings that cannot be used; the message is one line per mistake: the key, the value, what is allowed."""


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _hint(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def not_one_of(name: str, value: Any, options: tuple[str, ...] | dict) -> str:
    """``name 'value' is not one of a, b, c`` and the closest option, if one is close."""
    return f"{name} {value!r} is not one of {', '.join(options)}{_hint(str(value), options)}"


def choice(value: str, options: tuple[str, ...] | dict, name: str) -> str:
    """``value`` when it is one of ``options``, else ValueError (:func:`not_one_of`): for field validators."""
    if value not in options:
        raise ValueError(not_one_of(name, value, options))
    return value


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The settings model an annotation holds: itself, or the item of a list/tuple/optional of it."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for m in map(_model_in, get_args(annotation)) if m is not None), None)


def _sections(model: type[BaseModel] | None) -> dict[str, type[BaseModel]]:
    return model.sections() if model is not None and hasattr(model, "sections") else {}


def _fields_at(model: type[BaseModel] | None, path: list[str]) -> list[str]:
    """The setting names of the (nested) model at ``path``: where an unknown key was given."""
    for part in path:
        if part.isdigit():  # an item of a list of settings
            continue
        field = model.model_fields.get(part) if model is not None else None
        model = _model_in(field.annotation) if field is not None else _sections(model).get(part)
    return [*model.model_fields, *_sections(model)] if model is not None else []


def _line(error: dict[str, Any], model: type[BaseModel] | None) -> str:
    loc = [str(part) for part in error["loc"]]
    if error["type"] == "missing" and loc and loc[-1].isdigit():  # a tuple given too few values
        return f"{'.'.join(loc[:-1])}={error['input']!r}: too few values"
    key = ".".join(loc)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        known = _fields_at(model, loc[:-1])
        hint = _hint(loc[-1], known) or (f" (known: {', '.join(known)})" if known else "")
        return f"unknown setting {key}{hint}"
    if error["type"] == "missing":
        return f"{key}: required"
    if error["type"] == "value_error":  # our validators' sentences, most of them starting with the setting's name
        if not loc:
            return message
        if message.startswith(f"{loc[-1]} "):
            return ".".join([*loc[:-1], message])
        return f"{key}: {message}"
    return f"{key}={error['input']!r}: {message[:1].lower()}{message[1:]}"


def describe(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """pydantic's multi-line report as one line: every mistake with its key, value and what is allowed
    (``unknown setting swav.n_protoypes (did you mean n_prototypes?)``); ``model`` lists the known keys."""
    return "; ".join(dict.fromkeys(_line(error, model) for error in exc.errors()))


def checked(model: type[Settings], values: dict[str, Any]) -> Settings:
    """``model(**values)``, its validation errors as one :class:`SettingsError` line."""
    try:
        return model(**values)
    except ValidationError as exc:
        raise SettingsError(describe(exc, model)) from None


def merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers override earlier ones key by key, nested mappings merged (OmegaConf's merge); plain dict out."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.merge(*layers), resolve=False)
    except OmegaConfBaseException as exc:  # e.g. a value of a type settings cannot hold
        raise SettingsError(f"unusable setting: {one_line(exc)}") from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` strings (dotted keys for nested settings, YAML values; ``key=`` is the empty string) ->
    nested dict, later pairs winning: OmegaConf's dotlist."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    layers = []
    for pair in pairs:
        if "=" not in pair:
            raise SettingsError(f"expected key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:  # OmegaConf reads a bare "key=" as null
            layers.append(OmegaConf.from_dotlist([f"{key.strip()}={raw or repr('')}"]))
        except (OmegaConfBaseException, yaml.YAMLError) as exc:
            raise SettingsError(f"cannot read the setting {pair!r}: {one_line(exc)}") from None
    return merge({}, *layers)
