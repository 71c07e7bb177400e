"""The compute engine: workloads with real kernels, backends, and an isolating async executor."""
