"""Training: the BeatGAN loop, its resumable state, distillation."""
