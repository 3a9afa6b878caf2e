"""What a run shows: TensorBoard summaries, progress, manifests, FLOPs and peak."""
