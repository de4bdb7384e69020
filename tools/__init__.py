"""Developer tools: the local stack launcher, dev tokens, benchmarks and training scripts."""
