"""Experiment configuration: one YAML file per scale (CPU laptop, GPU cluster), same script.

Why a config and not flags: the acceptance criterion of a results table is that re-running
the documented command reproduces it. Everything that changes a number (backbone, schedule,
budgets, which models, attack budgets, repetitions) lives in one file that is copied into the
run folder, and the CPU and GPU scales differ only in that file.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

#: how a model row is trained: central (margin loss / distillation) or a Flower simulation
#: (FedAvg / PFM), each federated one also with distillation at the sites
MODES = ("scratch", "distill", "fedavg", "pfm", "fedavg_distill", "pfm_distill")


class ExperimentConfigError(ValueError):
    """The experiment YAML is invalid; the message names the key."""


@dataclass
class ModelSpec:
    """One row of the results table."""

    #: row label and run-folder name
    name: str
    #: frontend config (``facepriv.frontends.build_frontend``)
    frontend: dict[str, Any]
    #: "scratch" (margin loss only), "distill" (teacher embeddings + margin loss),
    #: "fedavg" / "pfm" (Flower simulation over identity-disjoint sites, margin loss),
    #: "fedavg_distill" / "pfm_distill" (the same, each site distilling from the teacher's
    #: embeddings of its own images)
    mode: str = "scratch"
    #: warm start from another (central, earlier) row's trained model: its backbone is copied
    #: where shapes agree, the stem for this row's channels starts fresh (``init_from`` in
    #: the TrainConfig) — how a team that owns an RGB model would build a protected one
    init_from: str | None = None
    #: this row's changes to the shared TrainConfig (deep-merged), e.g. a shorter schedule
    #: for a warm-started row: ``{schedule: {max_steps: 400}}``
    train: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ExperimentConfigError(f"model {self.name!r}: mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.frontend, dict) or "name" not in self.frontend:
            raise ExperimentConfigError(f"model {self.name!r}: frontend must be a mapping with a 'name'")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ExperimentConfigError(f"model name {self.name!r} must be a plain folder name")

    @property
    def strategy(self) -> str | None:
        """The federated strategy ("fedavg" / "pfm"), None for a central row."""
        base = self.mode.removesuffix("_distill")
        return base if base in ("fedavg", "pfm") else None

    @property
    def distilled(self) -> bool:
        """Whether the row learns from the teacher's embeddings."""
        return self.mode == "distill" or self.mode.endswith("_distill")


@dataclass
class FederatedSpec:
    """Federated arms: same schedule, split over sites (rounds x local_steps = central steps)."""

    clients: int = 4
    rounds: int = 10
    server_momentum: float = 0.9
    num_cpus: int = 2
    cpus_per_client: float = 1.0


@dataclass
class EvalSpec:
    #: evaluation repetitions of stochastic frontends (fresh randomness each); >= 2 gives a spread
    repetitions: int = 3
    batch_size: int = 64
    flip: bool = False


@dataclass
class AttackSpec:
    enabled: bool = True
    max_victims: int = 100
    max_gallery_per_identity: int = 5
    max_aux: int = 2000
    #: fields of ``facepriv.eval.attacks.AttackConfig`` (attacks, knowledge, fills, learned: {...}, ...)
    config: dict[str, Any] = field(default_factory=dict)
    #: models to attack ("all" or a list of model names)
    models: Any = "all"


@dataclass
class ExperimentConfig:
    name: str = "lfw_half"
    seed: int = 0
    device: str = "cpu"
    #: torch CPU threads (0: leave as is)
    threads: int = 0
    #: the TrainConfig shared by every model (data.path, frontend, distill and name are filled in)
    train: dict[str, Any] = field(default_factory=dict)
    #: teacher for "distill" rows: "dlib", an ArcFace .onnx file or a facepriv RGB checkpoint
    teacher: str = "dlib"
    distill: dict[str, Any] = field(default_factory=lambda: {"cosine_weight": 1.0, "head_weight": 0.1})
    judge: str = "dlib"
    models: list[ModelSpec] = field(default_factory=list)
    federated: FederatedSpec = field(default_factory=FederatedSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    attacks: AttackSpec = field(default_factory=AttackSpec)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model named {name!r}; configured: {[m.name for m in self.models]}")


def _section(cls: type, data: Any, where: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ExperimentConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ExperimentConfigError(f"{where}: unknown key(s) {unknown}; valid: {sorted(known)}")
    return cls(**data)


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    data = copy.deepcopy(data)
    if not isinstance(data, dict):
        raise ExperimentConfigError("experiment config must be a mapping")
    models = data.pop("models", None) or []
    if not isinstance(models, list) or not models:
        raise ExperimentConfigError("models: give a non-empty list of {name, frontend, mode}")
    sub = {"federated": FederatedSpec, "eval": EvalSpec, "attacks": AttackSpec}
    parsed = {k: _section(cls, data.pop(k, None), k) for k, cls in sub.items()}
    known = {f.name for f in fields(ExperimentConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ExperimentConfigError(f"unknown key(s) {unknown}; valid: {sorted(known)}")
    specs = [_section(ModelSpec, m, f"models[{i}]") for i, m in enumerate(models)]
    names = [m.name for m in specs]
    if len(set(names)) != len(names):
        raise ExperimentConfigError(f"model names must be unique, got {names}")
    for i, m in enumerate(specs):
        if not isinstance(m.train, dict):
            raise ExperimentConfigError(f"models[{i}] ({m.name}): train must be a mapping of TrainConfig overrides")
        if m.init_from is None:
            continue
        earlier = {s.name: s for s in specs[:i]}
        donor = earlier.get(m.init_from)
        if donor is None:
            raise ExperimentConfigError(f"models[{i}] ({m.name}): init_from {m.init_from!r} must name a row listed "
                                        f"before it; earlier rows: {sorted(earlier)}")
        if donor.strategy or m.strategy:
            raise ExperimentConfigError(f"models[{i}] ({m.name}): init_from is for central rows (donor and row)")
    return ExperimentConfig(models=specs, **parsed, **data)


#: configs shipped with facepriv (``--config cpu`` / ``--config gpu``)
BUILTIN = {"cpu": "lfw_half_cpu.yaml", "gpu": "lfw_half_gpu.yaml"}


def load_config(spec: str, overrides: list[str] | None = None) -> ExperimentConfig:
    """A built-in name (``cpu``, ``gpu``) or a YAML path, plus ``key.sub=value`` overrides."""
    path = Path(__file__).parent / "configs" / BUILTIN[spec] if spec in BUILTIN else Path(spec)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ExperimentConfigError(f"cannot read experiment config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ExperimentConfigError(f"{path}: invalid YAML: {exc}") from exc
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ExperimentConfigError(f"override {item!r} must look like key.sub=value")
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = yaml.safe_load(value)
    return config_from_dict(data)
