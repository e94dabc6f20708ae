"""Experiments on real data that produce the numbers in docs/ (``facepriv experiment``)."""

from .config import ExperimentConfig, ExperimentConfigError, ModelSpec, config_from_dict, load_config
from .lfw_data import LfwDataError, LfwHalf, prepare_lfw_half

__all__ = ["ExperimentConfig", "ExperimentConfigError", "ModelSpec", "config_from_dict", "load_config",
           "LfwDataError", "LfwHalf", "prepare_lfw_half", "run_experiment"]


def __getattr__(name: str):  # run_experiment pulls in training/eval: import it on first use
    if name == "run_experiment":
        from .lfw_half import run_experiment

        return run_experiment
    raise AttributeError(f"module 'facepriv.eval.experiments' has no attribute {name!r}")
