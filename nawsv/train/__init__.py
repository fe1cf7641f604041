"""One training loop and its two tasks (NAW-SV warm-up, fine-tuning), checkpoints, distributed setup."""
