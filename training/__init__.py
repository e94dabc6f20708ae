"""Central training: YAML configs, the trainer (single process or torchrun/DDP), DP-SGD and distillation."""

from __future__ import annotations

from facepriv.lazy import lazy_exports

# Re-exported lazily: `import training` must stay cheap (the `facepriv` CLI imports it to
# dispatch) and must not pull in opacus or the models until they are used.
_EXPORTS = {
    "TrainConfig": "facepriv.training.config",
    "ConfigError": "facepriv.training.config",
    "load_config": "facepriv.training.config",
    "save_config": "facepriv.training.config",
    "config_from_dict": "facepriv.training.config",
    "apply_overrides": "facepriv.training.config",
    "Trainer": "facepriv.training.trainer",
    "StepResult": "facepriv.training.trainer",
    "build_recognizer": "facepriv.training.components",
    "build_margin_head": "facepriv.training.components",
    "build_optimizer": "facepriv.training.components",
    "param_groups": "facepriv.training.components",
    "build_train_dataset": "facepriv.training.components",
    "build_scheduler": "facepriv.training.schedule",
    "ShardedBatchSampler": "facepriv.training.sampler",
    "DistEnv": "facepriv.training.distributed",
    "init_distributed": "facepriv.training.distributed",
    "DPSGD": "facepriv.training.dp_sgd",
    "DistillTargets": "facepriv.training.distill",
    "compute_teacher_embeddings": "facepriv.training.distill",
    "load_checkpoint_teacher": "facepriv.training.distill",
    "resolve_teacher": "facepriv.training.distill",
    "VerificationRunner": "facepriv.training.verification",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
