"""The Kubernetes runtime (operator, scheduler, endpoint discovery): see the operator issue."""
