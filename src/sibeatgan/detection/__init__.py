"""Detection on any ECG record with a trained detector: `sibeatgan detect`."""
