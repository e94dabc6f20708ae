"""``FedSettings``: the one description of a federated run's settings.

Why one place: the ``facepriv fed`` flags, the deployed app's run-config keys
(``federated/app/pyproject.toml``, ``flwr run --run-config``) and the settings file are all
*derived* from the dataclass fields below (name, type, default, help in the field's
metadata), so a new setting is added once and cannot be reachable from one entry point and
silently missing from another. ``None`` means "unset" everywhere: a run-config value of ``""``
leaves a setting as the settings file (or the default) has it, and any other value, ``0``
included, sets it (``server-momentum=0`` is a real setting, not "unset").

Reading goes through training's config I/O (``facepriv.training.config``): the same YAML
reader, the same typed field checks with "did you mean" for unknown keys, the same dotted
``key=value`` overrides, so a settings file and a training config fail the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .aggregators import AGGREGATORS

#: server strategies (``facepriv.federated.strategies.STRATEGIES`` implements them).
STRATEGY_NAMES = ("fedavg", "fedavgm", "pfm")

#: metadata keys of a field: ``help``; ``cli``: False when the CLI builds the field from other
#: flags (train config, data specs, node counts); ``cli_default``: the CLI's default where it
#: differs from the dataclass's; ``run_config``: False when the deployed app cannot set it.


def _opt(help: str, *, cli: bool = True, run_config: bool = True, cli_default: Any = dataclasses.MISSING,
         metavar: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"help": help, "cli": cli, "run_config": run_config}
    if cli_default is not dataclasses.MISSING:
        meta["cli_default"] = cli_default
    if metavar:
        meta["metavar"] = metavar
    return meta


@dataclass
class FedSettings:
    """Everything one federated run needs; sent to clients as part of each train config."""

    train_config: dict[str, Any] = field(metadata=_opt(
        "training config (model/head/optim/frontend) every site builds its trainer from", cli=False, run_config=False))
    out: str = field(metadata=_opt("run folder (checkpoints, metrics.json, verification.png)"))
    strategy: Literal[STRATEGY_NAMES] = field(default="fedavg", metadata=_opt(  # type: ignore[valid-type]
        "server strategy: FedAvg, FedAvgM (server momentum) or FedFace's PFM (federated momentum)",
        cli_default="pfm"))
    rounds: int = field(default=3, metadata=_opt("federated rounds"))
    local_steps: int = field(default=5, metadata=_opt("trainer steps per site per round"))
    min_train_nodes: int = field(default=2, metadata=_opt(
        "sites per round: all connected ones but at least this many (simulation: --clients)", cli=False))
    min_available_nodes: int = field(default=2, metadata=_opt(
        "connected sites needed to start a round (simulation: --clients)", cli=False))
    fraction_train: float = field(default=1.0, metadata=_opt("fraction of the connected sites sampled each round"))
    min_train_replies: int = field(default=1, metadata=_opt(
        "valid site updates needed to change the model (a round with fewer keeps the previous model)"))
    round_timeout: float = field(default=600.0, metadata=_opt(
        "seconds to wait for sites each round; late sites are dropped from the round"))
    max_update_norm: float | None = field(default=None, metadata=_opt(
        "reject updates farther than this (L2) from the sent model"))
    max_examples: float | None = field(default=None, metadata=_opt(
        "largest aggregation weight (num-examples) of one site per round; larger reports are clipped (default: "
        "local-steps x batch size, plus 4 sigma of Poisson sampling under DP-SGD)"))
    aggregator: Literal[AGGREGATORS] = field(default="mean", metadata=_opt(  # type: ignore[valid-type]
        "how accepted updates are combined: the num-examples-weighted mean, or robust to a minority of poisoning "
        "sites: coordinate-wise median, trimmed mean, norm clipping"))
    trim_fraction: float = field(default=0.2, metadata=_opt(
        "trimmed-mean: fraction of the sites' values cut at each end of every coordinate"))
    clip_norm: float | None = field(default=None, metadata=_opt(
        "norm-clip: largest L2 distance from the sent model a site's update keeps"))
    server_momentum: float = field(default=0.9, metadata=_opt("FedAvgM server momentum (0: plain FedAvg steps)"))
    server_learning_rate: float = field(default=1.0, metadata=_opt("FedAvgM server learning rate"))
    data: dict[str, Any] = field(default_factory=lambda: {"format": "synthetic"}, metadata=_opt(
        "data spec sent to the sites (simulation); deployed sites use node-config data-path",
        cli=False, run_config=False))
    eval_data: dict[str, Any] | None = field(default=None, metadata=_opt(
        "held-out identities for server-side verification after each round (None: skip)", cli=False, run_config=False))
    client_dp_noise: float | None = field(default=None, metadata=_opt(
        "Flower client-level DP: noise multiplier (enables fixedclipping_mod; fedavg/fedavgm only)"))
    client_dp_clip: float = field(default=1.0, metadata=_opt("client-level DP: clipping norm of a site's update"))
    fv_candidates: int = field(default=0, metadata=_opt(
        "FedFace federated validation: each round, K candidate aggregation weightings (sample counts, uniform, "
        "Dirichlet draws) are scored by the sites on held-out identities and the best is kept (0: off; not with "
        "client-level DP)", metavar="K"))
    fv_val_identities: int = field(default=2, metadata=_opt(
        "identities each site holds out of training to score FV candidates (>= 2)"))
    fv_concentration: float = field(default=2.0, metadata=_opt(
        "Dirichlet concentration of the random FV candidates (larger: closer to sample counts)"))
    resume: bool = field(default=True, metadata=_opt(
        "continue after the last round checkpointed in out (--no-resume: start from round 1)"))
    seed: int = field(default=0, metadata=_opt("seed of the model init, data order and synthetic data (not of "
                                               "any privacy randomness, which comes from the OS CSPRNG)"))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "federated settings") -> FedSettings:
        """Typed construction with training's checks: an unknown key is named with a "did you
        mean", a wrong type names the key and the value."""
        from facepriv.training.config import ConfigError, _from_dict

        if "train_config" not in data:
            raise ConfigError(f"{where}: no train_config (a training config the sites build their trainer from)")
        if "out" not in data:
            raise ConfigError(f"{where}: no out (the run folder)")
        try:
            return _from_dict(cls, data, "")
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def settings_fields(entry: str) -> list[dataclasses.Field[Any]]:
    """The fields ``entry`` (``"cli"`` or ``"run_config"``) exposes, in declaration order."""
    return [f for f in dataclasses.fields(FedSettings) if f.metadata.get(entry, True)]


def flag_name(f: dataclasses.Field[Any]) -> str:
    """``max_update_norm`` -> ``max-update-norm``: the CLI flag (without ``--``) and the run-config key."""
    return f.name.replace("_", "-")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """``(type without None, whether None is allowed)``."""
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(FedSettings)


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per CLI field of ``FedSettings`` (type, choices, default and help from the field)."""
    hints = _hints()
    for f in settings_fields("cli"):
        tp, optional = _base_type(hints[f.name])
        flag = "--" + flag_name(f)
        default = f.metadata.get("cli_default", f.default)
        help_text = str(f.metadata["help"])
        if tp is bool:
            if default:
                parser.add_argument("--no-" + flag_name(f), dest=f.name, action="store_false", help=help_text)
            else:
                parser.add_argument(flag, dest=f.name, action="store_true", help=help_text)
            parser.set_defaults(**{f.name: bool(default)})
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": help_text}
        if typing.get_origin(tp) is Literal:
            kwargs["choices"] = typing.get_args(tp)
        else:
            kwargs["type"] = tp
        if default is dataclasses.MISSING:
            kwargs.pop("default")
            kwargs["required"] = True
        elif "default" not in help_text:
            kwargs["help"] += " (default: unset)" if default is None and optional else f" (default: {default})"
        if "metavar" in f.metadata:
            kwargs["metavar"] = f.metadata["metavar"]
        parser.add_argument(flag, **kwargs)


def cli_values(args: argparse.Namespace) -> dict[str, Any]:
    """The CLI fields of ``FedSettings`` from parsed ``args`` (those ``add_settings_arguments`` added)."""
    return {f.name: getattr(args, f.name) for f in settings_fields("cli")}


#: run-config keys that are not settings: where the settings come from.
SETTINGS_FILE_KEY = "settings-file"
TRAIN_CONFIG_YAML_KEY = "train-config-yaml"
#: a run-config value meaning "unset" (TOML has no null).
UNSET = ""


def run_config_defaults() -> dict[str, Any]:
    """``[tool.flwr.app.config]`` of ``federated/app/pyproject.toml``: every run-config key, unset."""
    keys = {SETTINGS_FILE_KEY: UNSET, TRAIN_CONFIG_YAML_KEY: UNSET}
    keys.update({flag_name(f): UNSET for f in settings_fields("run_config")})
    return keys


def load_settings_file(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A settings file (YAML or JSON, as ``facepriv fed settings`` writes) as a raw mapping,
    with dotted ``key=value`` overrides applied (training's reader and override syntax)."""
    from facepriv.training.config import _read_yaml, apply_overrides

    return apply_overrides(_read_yaml(Path(path)), overrides)


def settings_from_run_config(run_config: dict[str, Any]) -> FedSettings:
    """Deployment: ``[tool.flwr.app.config]`` / ``flwr run --run-config`` keys -> settings.

    ``settings-file`` names the full settings (``facepriv fed settings`` writes one);
    ``train-config-yaml`` a training YAML; every other key is a ``FedSettings`` field
    (``max-update-norm`` -> ``max_update_norm``) and overrides the file unless it is ``""``.
    Unknown keys are refused by name.
    """
    from facepriv.training.config import ConfigError, config_to_dict, load_config

    known = run_config_defaults()
    unknown = sorted(set(run_config) - set(known))
    if unknown:
        raise ConfigError(f"run config: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    data: dict[str, Any] = {}
    if run_config.get(SETTINGS_FILE_KEY):
        data = load_settings_file(str(run_config[SETTINGS_FILE_KEY]))
    if run_config.get(TRAIN_CONFIG_YAML_KEY):
        data["train_config"] = config_to_dict(load_config(str(run_config[TRAIN_CONFIG_YAML_KEY])))
    for f in settings_fields("run_config"):
        value = run_config.get(flag_name(f), UNSET)
        if value != UNSET:
            data[f.name] = value
    if "train_config" not in data:
        raise ConfigError(f"run config needs {SETTINGS_FILE_KEY} or {TRAIN_CONFIG_YAML_KEY}")
    data.setdefault("out", "runs/federated")
    return FedSettings.from_dict(data, where="run config")
