"""Data: a dataset's records fetched and verified, beats, the split, augmentation, preprocessing."""
