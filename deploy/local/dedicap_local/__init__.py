"""The local stack: a real Kubernetes control plane, kwok GPU nodes, Prometheus and real Triton
on 127.0.0.1, for tests and the demo. It is not part of the operator image."""
