"""GPU throughput benchmark: LLaVA's reference training path against the project's default path."""
