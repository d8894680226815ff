"""Configuration: one YAML of defaults, algorithm presets, task files, dotted overrides.

Layering, later wins:
    configs/defaults.yaml  ->  configs/algo/<algo>.yaml  ->  task file  ->  --set k=v ...

The algorithm comes from ``--algo`` if given, else from the task file's ``algo`` key,
else from the defaults. Every layer may only set keys that exist in the defaults:
a typo is an error that names the key, never a silently ignored setting.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

CONFIG_DIR = Path(
    os.environ.get("DAYDREAM_CONFIG_DIR", Path(__file__).resolve().parents[1] / "configs")
)


class ConfigError(ValueError):
    """A configuration file or override that cannot be applied."""


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _merge_strict(base: DictConfig, layer: dict | DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except (ConfigKeyError, ConfigAttributeError) as e:
        key = getattr(e, "full_key", None) or str(e)
        raise ConfigError(
            f"unknown config key '{key}' in {source} (every key must exist in "
            f"{CONFIG_DIR / 'defaults.yaml'}; check the spelling)"
        ) from None


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
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_config(
    path: str | Path | None = None,
    algo: str | None = None,
    overrides: Sequence[str] = (),
) -> DictConfig:
    """Load defaults, the algorithm preset, the task file and overrides, strictly."""
    config = OmegaConf.create(_read_yaml(CONFIG_DIR / "defaults.yaml"))
    OmegaConf.set_struct(config, True)
    task = _read_yaml(Path(path)) if path is not None else {}
    cli = parse_overrides(overrides)
    algo = algo or cli.get("algo") or task.get("algo") or config.algo
    algo_file = CONFIG_DIR / "algo" / f"{algo}.yaml"
    if not algo_file.is_file():
        known = sorted(p.stem for p in (CONFIG_DIR / "algo").glob("*.yaml"))
        raise ConfigError(f"unknown algorithm '{algo}'; known: {', '.join(known)}")
    config = _merge_strict(config, _read_yaml(algo_file), str(algo_file))
    config = _merge_strict(config, task, str(path))
    config = _merge_strict(config, cli, "--set overrides")
    config.algo = algo
    return config


def to_yaml(config: DictConfig) -> str:
    return OmegaConf.to_yaml(config)


def to_dict(config: DictConfig) -> dict:
    return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]


def from_dict(data: dict) -> DictConfig:
    """Rebuild a config saved with :func:`to_dict` (for example inside a checkpoint)."""
    config = OmegaConf.create(data)
    OmegaConf.set_struct(config, True)
    return config
