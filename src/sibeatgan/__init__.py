"""SI-BeatGAN: BeatGAN anomaly detection for ECG beats, with knowledge distillation."""

__version__ = "0.1.0"
