"""Central training: YAML configs, the trainer (single process or torchrun/DDP), DP-SGD and distillation."""

from __future__ import annotations

from facepriv.lazy import lazy_exports

# Re-exported lazily: `import training` must stay cheap (the `facepriv` CLI imports it to
# dispatch) and must not pull in opacus or the models until they are used.
_EXPORTS = {
    "TrainConfig": "training.config",
    "ConfigError": "training.config",
    "load_config": "training.config",
    "save_config": "training.config",
    "config_from_dict": "training.config",
    "apply_overrides": "training.config",
    "Trainer": "training.trainer",
    "StepResult": "training.trainer",
    "build_recognizer": "training.components",
    "build_margin_head": "training.components",
    "build_optimizer": "training.components",
    "param_groups": "training.components",
    "build_train_dataset": "training.components",
    "build_scheduler": "training.schedule",
    "ShardedBatchSampler": "training.sampler",
    "DistEnv": "training.distributed",
    "init_distributed": "training.distributed",
    "DPSGD": "training.dp_sgd",
    "DistillTargets": "training.distill",
    "compute_teacher_embeddings": "training.distill",
    "load_checkpoint_teacher": "training.distill",
    "resolve_teacher": "training.distill",
    "VerificationRunner": "training.verification",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
