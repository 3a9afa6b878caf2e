"""Developer tooling (benchmarks, chaos trials); not part of the runtime package."""
