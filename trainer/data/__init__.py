"""Segmentation data: the record schema, dataset descriptions, augmentation and input pipelines."""
