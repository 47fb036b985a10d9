"""Names every Kubernetes-side module shares: labels, annotations, images, the scheduler.

One place, so the operator, the scheduler, the gateway's discovery and the lowering
functions agree on the strings they select and patch by.
"""

from __future__ import annotations

from aiplane import __version__
from aiplane.api import GROUP

AIPLANE_IMAGE = f"ghcr.io/aiplane/aiplane:{__version__}"
"""The one image that runs ``aiplane operator|scheduler|gateway``, preload and batch shards."""

AIPLANE_UID = 65532
"""The non-root user of the aiplane image (the distroless ``nonroot`` convention)."""

SCHEDULER_NAME = "aiplane"
"""``schedulerName`` of every aiplane pod (Model, TrainingJob, BatchJob): the secondary scheduler."""

MANAGED_BY = "aiplane"

# Recommended labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"

# aiplane's own labels and annotations.
LABEL_MODEL = f"{GROUP}/model"
LABEL_JOB = f"{GROUP}/job"
LABEL_ENGINE = f"{GROUP}/engine"
LABEL_QUEUE = f"{GROUP}/queue"
LABEL_SERVED_MODEL = f"{GROUP}/served-model"
LABEL_GPU_MODEL = f"{GROUP}/gpu-model"  # what admins (and the dev KWOK fleet) put on GPU nodes
ANNOTATION_SERVED_MODEL = f"{GROUP}/served-model"
ANNOTATION_GPU_FRACTION = f"{GROUP}/gpu-fraction"
ANNOTATION_PRIORITY = f"{GROUP}/priority"
ANNOTATION_GANG_SIZE = f"{GROUP}/gang-size"
ANNOTATION_GPU_DEVICES = f"{GROUP}/gpu-devices"  # device indexes the aiplane scheduler chose, "0,1"
ANNOTATION_PREEMPTED = f"{GROUP}/preempted"  # on a victim's pods: why, before their SIGTERM

# What the NVIDIA device plugin and GPU feature discovery use.
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

# What the Job controller sets on the pods of an Indexed Job.
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"

PROMETHEUS_ENV = "AIPLANE_PROMETHEUS_URL"  # the Prometheus the operator reads engine metrics from
