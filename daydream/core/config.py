"""Configuration: one YAML of defaults whose types are the schema, presets, task files, overrides.

Layering, later wins:
    configs/defaults.yaml -> configs/algo/<algo>.yaml -> configs/size/<size>.yaml
        -> task file -> the task file's ``sizes: {<size>: ...}`` block -> --set k=v ...

The algorithm comes from ``--algo`` if given, else from the task file's ``algo`` key,
else from the defaults; the size likewise (``--size``, ``size``). A size is the network
and batch sizes: ``small`` learns a simulated robot on a CPU laptop, ``daydreamer`` is
DayDreamer's, for a CUDA learner; ``auto`` is resolved by the caller, which knows the
device (``load_config(..., auto_size=...)``; the command line picks small without CUDA).

The schema is read off the defaults: every key of ``configs/defaults.yaml`` becomes a
typed field of a dataclass per block (an OmegaConf structured config), typed by its
default value (``steps: 100000`` is an int, ``lr: 1.0e-4`` a float, ``bins: [[...]]`` a
list). So every layer is checked when it is merged, before anything starts:

- a key that is not in the defaults is an error naming it (a typo never passes silently);
- a value of the wrong type is one line naming the key, the value, the expected type and
  where it came from: ``config key train.steps: 'abc' is not an int (--set overrides)``.

Values that derive from others are interpolations in the defaults
(``replay.min_size: ${train.prefill}``): they follow their source unless set on purpose.
Durations carry their unit in the key (``_s``, ``_ms``), counts of steps say so.
"""

from __future__ import annotations

import dataclasses
import keyword
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationResolutionError,
    ValidationError,
)

CONFIG_DIR = Path(
    os.environ.get("DAYDREAM_CONFIG_DIR", Path(__file__).resolve().parents[2] / "configs")
)
DEFAULTS = "defaults.yaml"

_TYPE_NAMES = {int: "an int", float: "a number", bool: "true or false", str: "a string"}
_PLURAL = {int: "ints", float: "numbers", bool: "booleans", str: "strings"}


class ConfigError(ValueError):
    """A configuration file or override that cannot be applied (one line, names the key)."""


# ---------------------------------------------------------------- the schema
def _leaf_type(value: Any, key: str) -> Any:
    if isinstance(value, bool):
        return bool
    if isinstance(value, int):
        return int
    if isinstance(value, float):
        return float
    if isinstance(value, str):
        return str
    if value is None:
        return Optional[Any]  # noqa: UP045 - OmegaConf needs typing.Optional
    if isinstance(value, list):
        kinds = {_leaf_type(v, key) for v in value}
        if len(kinds) == 1 and next(iter(kinds)) in (int, float, str, bool):
            return list[next(iter(kinds))]
        if kinds <= {int, float}:
            return list[float]
        return list[Any]
    raise ConfigError(f"{DEFAULTS}: key {key} has an unsupported value {value!r}")


def _dataclass_of(node: dict, raw: dict, path: str) -> type:
    """A dataclass whose fields are the keys of ``node`` (resolved) typed by their values;
    ``raw`` (unresolved) supplies the defaults, so interpolations stay interpolations."""
    fields = []
    for key, value in node.items():
        full = f"{path}.{key}" if path else key
        if not key.isidentifier() or keyword.iskeyword(key):
            raise ConfigError(f"{DEFAULTS}: key {full!r} is not a valid name")
        if isinstance(value, dict):
            sub = _dataclass_of(value, raw[key], full)
            fields.append((key, sub, dataclasses.field(default_factory=sub)))
        else:
            default = raw[key]
            if isinstance(default, list):
                fields.append((key, _leaf_type(value, full), dataclasses.field(
                    default_factory=lambda d=default: list(d))))
            else:
                fields.append((key, _leaf_type(value, full), dataclasses.field(default=default)))
    name = "".join(p.capitalize() for p in path.replace(".", "_").split("_")) or "Daydream"
    return dataclasses.make_dataclass(f"{name}Config", fields)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


_SCHEMA: dict[Path, type] = {}


def schema() -> type:
    """The dataclass of the whole config, built once from the defaults file."""
    path = CONFIG_DIR / DEFAULTS
    if path not in _SCHEMA:
        raw = _read_yaml(path)
        resolved = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
        _SCHEMA[path] = _dataclass_of(resolved, raw, "")
    return _SCHEMA[path]


# ---------------------------------------------------------------- loading
def _fits(value: Any, kind: Any) -> bool:
    """Whether ``value`` (as YAML or --set gave it) can be a value of type ``kind``."""
    if kind is bool:
        return isinstance(value, bool) or str(value).lower() in ("true", "false")
    if kind is int:
        if isinstance(value, bool):
            return False
        if isinstance(value, float):
            return value.is_integer()
        try:
            int(str(value))
            return True
        except ValueError:
            return False
    if kind is float:
        if isinstance(value, bool):
            return False
        try:
            float(str(value))
            return True
        except ValueError:
            return False
    if kind is str:
        return not isinstance(value, (dict, list))
    if getattr(kind, "__origin__", None) is list:
        (item,) = kind.__args__
        return isinstance(value, list) and (item is Any or all(_fits(v, item) for v in value))
    return True  # Any, Optional[Any]


def _describe(kind: Any) -> str:
    if kind in _TYPE_NAMES:
        return _TYPE_NAMES[kind]
    if getattr(kind, "__origin__", None) is list:
        (item,) = kind.__args__
        return f"a list of {_PLURAL[item]}" if item in _PLURAL else "a list"
    return "a value of the default's type"


def check_layer(layer: dict, source: str, node: type | None = None, path: str = "") -> None:
    """Raise ConfigError (one line) for the first key of ``layer`` that is not in the schema
    or whose value does not fit the type of its default."""
    node = node or schema()
    fields = {f.name: f.type for f in dataclasses.fields(node)}
    for key, value in layer.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(
                f"unknown config key '{full}' in {source} (every key must exist in "
                f"{CONFIG_DIR / DEFAULTS}; check the spelling)"
            )
        kind = fields[key]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                keys = ", ".join(f.name for f in dataclasses.fields(kind))
                raise ConfigError(
                    f"config key {full}: {value!r} is not a block of keys ({keys}) ({source})"
                )
            check_layer(value, source, kind, full)
        elif isinstance(value, str) and value.startswith("${"):
            continue  # an interpolation: checked once resolved
        elif not _fits(value, kind):
            raise ConfigError(f"config key {full}: {value!r} is not {_describe(kind)} ({source})")
        elif kind is int and isinstance(value, float):
            layer[key] = int(value)  # 1e5 on the command line is a float to YAML


def _merge(base: DictConfig, layer: dict, source: str) -> DictConfig:
    check_layer(layer, source)
    try:
        return OmegaConf.merge(base, layer)
    except (ConfigKeyError, ConfigAttributeError, ValidationError) as e:
        key = getattr(e, "full_key", "") or ""
        raise ConfigError(f"config key {key}: {str(e).splitlines()[0]} ({source})") from None


def parse_overrides(overrides: Sequence[str]) -> dict:
    """Turn ``["model.rssm.deter=256", ...]`` into a nested dict, values parsed as YAML."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override '{item}' must look like key=value, e.g. model.rssm.deter=256"
            )
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override '{item}' has an empty key part")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override")
        node[parts[-1]] = _parse_value(value)
    return nested


def _parse_value(text: str):
    """YAML scalars and lists, plus forms YAML 1.1 reads as strings such as ``3e-4``."""
    if text == "":
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _preset(kind: str, name: str) -> tuple[dict, Path]:
    path = CONFIG_DIR / kind / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (CONFIG_DIR / kind).glob("*.yaml")))
        what = {"algo": "algorithm", "size": "size"}[kind]
        raise ConfigError(f"unknown {what} '{name}'; known: {known}")
    return _read_yaml(path), path


def requested_size(path: str | Path | None = None, overrides: Sequence[str] = ()) -> str:
    """The size the task file and overrides ask for, before any is applied (may be auto)."""
    task = _read_yaml(Path(path)) if path is not None else {}
    cli = parse_overrides(overrides)
    return str(cli.get("size") or task.get("size") or schema().size)


def load_config(
    path: str | Path | None = None,
    algo: str | None = None,
    overrides: Sequence[str] = (),
    auto_size: str | None = None,
) -> DictConfig:
    """Load defaults, the presets, the task file and overrides, typed and strict.

    ``auto_size`` is what ``size: auto`` means here (the caller knows the device); without
    it, ``auto`` applies no size preset (the defaults' sizes). Raises ConfigError (one line
    naming the key) for an unknown key or a value of the wrong type, before anything is
    built or written.
    """
    config = OmegaConf.structured(schema())
    OmegaConf.set_struct(config, True)
    task = _read_yaml(Path(path)) if path is not None else {}
    sizes = task.pop("sizes", None) or {}
    if not isinstance(sizes, dict) or not all(isinstance(v, dict) for v in sizes.values()):
        raise ConfigError(f"{path}: 'sizes' must map size names to blocks of keys")
    for name, block in sizes.items():
        _preset("size", name)  # a known size
        check_layer(block, f"{path} sizes.{name}")
    cli = parse_overrides(overrides)
    algo = algo or cli.get("algo") or task.get("algo") or config.algo
    size = str(cli.get("size") or task.get("size") or config.size)
    if size == "auto":
        size = auto_size or "auto"
    layers = [_preset("algo", algo)]
    if size != "auto":
        layers.append(_preset("size", size))
    for layer, source in layers:
        config = _merge(config, layer, str(source))
    config = _merge(config, task, str(path))
    if size in sizes:
        config = _merge(config, sizes[size], f"{path} sizes.{size}")
    config = _merge(config, cli, "--set overrides")
    config.algo, config.size = algo, size
    try:
        OmegaConf.resolve(config)  # derived values (${...}) and their types, checked now
    except (InterpolationResolutionError, ValidationError) as e:
        key = getattr(e, "full_key", "") or ""
        raise ConfigError(f"config key {key}: {str(e).splitlines()[0]}") from None
    return config


def to_yaml(config: DictConfig) -> str:
    return OmegaConf.to_yaml(config)


def to_dict(config: DictConfig) -> dict:
    return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]


def from_dict(data: dict) -> DictConfig:
    """Rebuild a config saved with :func:`to_dict` (for example inside a checkpoint). Keys added
    to defaults.yaml since it was saved take their defaults, so an older checkpoint loads."""
    defaults = OmegaConf.create(_read_yaml(CONFIG_DIR / DEFAULTS))
    config = OmegaConf.merge(defaults, OmegaConf.create(data))
    OmegaConf.set_struct(config, True)
    return config


ACTOR_DISTS = ("auto", "trunc_normal", "tanh_normal", "onehot")


def actor_dist(name: str, discrete: bool) -> str:
    """``behavior.actor.dist`` resolved: auto is DreamerV2's rule (onehot for discrete actions,
    trunc_normal for continuous ones). The setting chooses among continuous distributions:
    discrete actions are always onehot (a preset's tanh_normal does not apply to them)."""
    if name not in ACTOR_DISTS:
        known = ", ".join(ACTOR_DISTS)
        raise ValueError(f"behavior.actor.dist must be one of {known}, got {name!r}")
    if discrete:
        return "onehot"
    if name == "onehot":
        raise ValueError("behavior.actor.dist onehot is for discrete actions; use auto")
    return "trunc_normal" if name == "auto" else name
