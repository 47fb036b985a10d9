"""Runtimes: actuators that turn policy decisions into processes or Kubernetes objects."""
