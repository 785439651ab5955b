"""paretoserve: latency / throughput / cost / energy trade-offs of LLM serving deployments."""
