"""Training: one loop on accelerate, stage objectives (SFT, on-policy self-distillation)."""
