"""Pipeline configuration: JSON-schema validation with defaults, and the checks a schema cannot express.

The schema (``schemas/config.schema.yaml``) is the single source of keys and defaults; Snakemake validates
with it through ``snakemake.utils.validate`` and the ``cellresdm`` CLI through :func:`load_config`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cellresdm.errors import ConfigError
from cellresdm.io import write_text

SCHEMA_FILE = "config.schema.yaml"
#: Config sections renamed so that no two names can be confused: old name -> new name.
RENAMED_SECTIONS: dict[str, str] = {"segment": "instances", "segmentation": "segmentation_scores"}


def schema_path() -> Path:
    """Path of the config schema shipped inside the package."""
    return Path(str(resources.files("cellresdm") / "schemas" / SCHEMA_FILE))


def load_schema() -> dict[str, Any]:
    return yaml.safe_load(schema_path().read_text())


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    """One line naming the config key at fault, e.g. ``plates.0.id: 'BR 1' does not match ...``."""
    where = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        prefix = "" if where == "<top level>" else f"{where}."
        names = ", ".join(f"'{prefix}{k}'" for k in unknown)
        return f"unknown config key {names}; allowed here: {', '.join(allowed)}"
    return f"config key '{where}': {error.message}"


def _fill_defaults(validator_class):
    """A validator class that writes schema defaults into the instance while validating."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate ``config`` against the schema, fill defaults in place, and run :func:`check_config`.

    Raises:
        ConfigError: naming the first offending key (all schema errors are listed).
    """
    renamed = [f"'{old}' is now '{new}'" for old, new in RENAMED_SECTIONS.items() if old in config]
    if renamed:
        raise ConfigError(f"renamed config key(s): {'; '.join(renamed)} (same settings, new name)")
    schema = load_schema()
    validator = _fill_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_describe(e) for e in errors))
    check_config(config)
    return config


def check_config(config: dict[str, Any]) -> None:
    """Checks across keys, run after schema validation (which has filled the defaults)."""
    ids = [p["id"] for p in config["plates"]]
    repeated = sorted(k for k, n in Counter(ids).items() if n > 1)
    if repeated:
        raise ConfigError(f"config key 'plates': plate id(s) listed more than once: {', '.join(repeated)}")
    if config["methods"] and config["reference"] not in config["methods"]:
        raise ConfigError(
            f"config key 'reference': {config['reference']!r} is not an enabled method ({', '.join(config['methods'])})"
        )
    scores = config["segmentation_scores"]
    if not any(abs(scores["ttest_tau"] - tau) < 1e-9 for tau in scores["taus"]):
        raise ConfigError(
            f"config key 'segmentation_scores.ttest_tau': {scores['ttest_tau']} is not one of segmentation_scores.taus"
        )
    check_predict(config)
    if config["source"] == "demo":
        from cellresdm.synth import cell_lines

        for i, plate in enumerate(config["plates"]):
            if plate["cell_line"] not in cell_lines():
                raise ConfigError(
                    f"config key 'plates.{i}.cell_line': the demo generator knows {', '.join(cell_lines())}, "
                    f"not {plate['cell_line']!r} (plate {plate['id']})"
                )
        demo = config["demo"]
        extra = sorted(set(demo["black_if_wells"]) - set(demo["wells"]))
        if extra:
            raise ConfigError(f"config key 'demo.black_if_wells': wells {', '.join(extra)} are not in demo.wells")
        for j, missing in enumerate(demo["missing_fields"]):
            if missing["well"] not in demo["wells"] or missing["site"] > demo["sites"]:
                raise ConfigError(
                    f"config key 'demo.missing_fields.{j}': {missing['well']} site {missing['site']} "
                    "is not a field of the demo plates (demo.wells x demo.sites)"
                )


def check_predict(config: dict[str, Any]) -> None:
    """Checks of the predict plates (split ``predict``) and section ``predict`` that need no file content: every
    method of ``predict.methods`` is trained in this run or has a model file that exists."""
    plates = plates_in_split(config, "predict")
    section = config["predict"]
    for method, path in section["model"].items():
        if method not in section["methods"]:
            raise ConfigError(f"config key 'predict.model.{method}': {method} is not in predict.methods")
        if not Path(path).is_file():
            raise ConfigError(f"config key 'predict.model.{method}': model file {path} is missing")
    if not plates:
        return
    for method in section["methods"]:
        if method in section["model"]:
            continue
        if method not in config["methods"]:
            raise ConfigError(
                f"config key 'predict.methods': {method} predicts plate(s) {', '.join(plates)} but is not trained "
                f"in this run (not in methods) and has no model file (predict.model.{method})"
            )
        if "train" not in splits(config):
            raise ConfigError(
                f"config key 'predict.methods': {method} predicts plate(s) {', '.join(plates)} but the run has no "
                f"train plate to train it on and no model file (predict.model.{method})"
            )


def load_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read a YAML config (None = all defaults), validate it and fill defaults."""
    config: dict[str, Any] = {}
    if path is not None:
        try:
            config = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc})") from exc
        if not isinstance(config, dict):
            raise ConfigError(f"{path}: a config file must hold a mapping of keys, got {type(config).__name__}")
    return validate_config(config)


class _ConfigDumper(yaml.SafeDumper):
    """Block style, but lists of plain values on one line (``channel_mult: [1, 2, 2, 4]``), as configs are written."""

    def represent_list(self, data: list) -> yaml.SequenceNode:
        flow = all(not isinstance(item, dict | list) for item in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ConfigDumper.add_representer(list, _ConfigDumper.represent_list)


def config_origin(files: Sequence[str], overrides: Iterable[str] = ()) -> str:
    """What a run's config is made of, in merge order: e.g. ``schema defaults + configs/cpg0000.yaml``.

    Args:
        files: the config files, in the order they were merged.
        overrides: the top-level keys set on the command line (``snakemake --config KEY=VALUE``).
    """
    parts = ["schema defaults", *files]
    keys = list(overrides)
    if keys:
        parts.append(f"--config {', '.join(keys)}")
    return " + ".join(parts)


def write_resolved_config(config: Mapping[str, Any], path: str | os.PathLike, origin: str) -> None:
    """Write the validated ``config`` (every default filled in) to ``path`` atomically, as YAML under a header
    naming ``origin`` (:func:`config_origin`). Top-level keys follow the schema's order; the file is itself a
    complete config, so ``--configfile PATH`` repeats the run's settings."""
    order = [key for key in load_schema()["properties"] if key in config]
    body = yaml.dump({key: config[key] for key in order}, Dumper=_ConfigDumper, sort_keys=False)
    write_text(path, f"# The resolved configuration of this run: {origin}.\n{body}")


def section(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Config section ``name`` with the schema's defaults filled in and ``overrides`` applied, validated.

    The one way to get a section outside a full config (tests, benchmarks, library defaults): the schema stays
    the single source of every default.

    Raises:
        ConfigError: ``name`` is not a config section, or an override is invalid (naming the key).
    """
    properties = load_schema()["properties"]
    if name not in properties or properties[name].get("type") != "object":
        raise ConfigError(f"{name!r} is not a config section ({', '.join(sorted(properties))})")
    return validate_config({name: copy.deepcopy(overrides or {})})[name]


def settings_values(
    settings_class: type, section_values: Mapping[str, Any], name: str, skip: Iterable[str] = ()
) -> dict[str, Any]:
    """The values of the fields of the dataclass ``settings_class`` (but ``skip``) in the validated config section
    ``name``, lists as tuples: the body of every settings class's ``from_config``.

    Raises:
        ConfigError: naming every field the section lacks (it was not validated: see :func:`section`).
    """
    names = [f.name for f in dataclasses.fields(settings_class) if f.name not in set(skip)]
    lacking = [key for key in names if key not in section_values]
    if lacking:
        keys = ", ".join(f"{name}.{key}" for key in lacking)
        raise ConfigError(f"config section '{name}' lacks {keys} (pass a validated section: cellresdm.config.section)")
    return {key: tuple(value) if isinstance(value, list) else value for key in names for value in [section_values[key]]}


def plates_in_split(config: dict[str, Any], split: str) -> list[str]:
    return [p["id"] for p in config["plates"] if p["split"] == split]


def splits(config: dict[str, Any]) -> list[str]:
    """Splits that have at least one plate, in train/val/test order."""
    present = {p["split"] for p in config["plates"]}
    return [s for s in ("train", "val", "test") if s in present]
