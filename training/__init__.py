"""Central training: YAML configs, the trainer (single process or torchrun/DDP), DP-SGD and distillation."""
