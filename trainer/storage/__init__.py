"""Files and checkpoints: atomic writes, checkpoint lookup, restore and copy."""
