"""Small command-line tools around the trainer (model statistics, ...)."""
