"""Language-model engine: data, packed log-probs, reference caching, offline training."""
