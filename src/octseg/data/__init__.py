"""Data: readers for raw layouts, prepared datasets, splits, synthetic OCT, augmentation."""
