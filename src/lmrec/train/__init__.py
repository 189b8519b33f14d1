"""Training: the trainer loop driver, checkpoints, torchrun/DDP, MLflow tracking."""
