"""Where a job runs: tf.distribute strategies, clusters, preemption, local launchers."""
