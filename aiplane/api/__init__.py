"""The resource API, group ``aiplane.dev`` version ``v1alpha1``: pydantic models.

Everything else in aiplane imports from here; this package imports nothing of aiplane
but :mod:`aiplane.errors`.
"""

from aiplane.api.jobs import BatchJob, BatchJobSpec, Checkpoint, TrainingJob, TrainingJobSpec
from aiplane.api.kinds import KINDS, AnyResource
from aiplane.api.loader import load_file, parse_document, parse_yaml
from aiplane.api.meta import API_VERSION, GROUP, VERSION, ObjectMeta, Resource
from aiplane.api.model import (
    Autoscaling,
    Cache,
    Model,
    ModelResources,
    ModelSpec,
    Replicas,
    Routing,
    Timeouts,
)
from aiplane.api.quantity import parse_duration, parse_quantity
from aiplane.api.queue import Queue, QueueSpec
from aiplane.api.schema import all_schemas, json_schema

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "AnyResource",
    "Autoscaling",
    "BatchJob",
    "BatchJobSpec",
    "Cache",
    "Checkpoint",
    "Model",
    "ModelResources",
    "ModelSpec",
    "ObjectMeta",
    "Queue",
    "QueueSpec",
    "Replicas",
    "Resource",
    "Routing",
    "Timeouts",
    "TrainingJob",
    "TrainingJobSpec",
    "all_schemas",
    "json_schema",
    "load_file",
    "parse_document",
    "parse_duration",
    "parse_quantity",
    "parse_yaml",
]
