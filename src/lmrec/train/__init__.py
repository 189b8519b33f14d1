"""Training: the trainer loop driver, the production refit, checkpoints, torchrun/DDP, the
train/refit artefact layout, MLflow tracking."""
