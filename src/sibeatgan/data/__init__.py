"""Data: MIT-BIH fetched and verified, beats, the split, augmentation, preprocessing."""
