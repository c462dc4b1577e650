"""The web dashboard and the cluster's built-in Prometheus metrics, read from Redis alone."""
