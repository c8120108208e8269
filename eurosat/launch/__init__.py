"""Running jobs: the launcher around `flwr run`, the Deployment Engine's processes, process control."""
