"""The dedicap API (group `dedicap.dev`, version `v1alpha1`) as pydantic models.

These models are the single source of truth: `dedicap.api.crdgen` turns them into the CRD YAML
under `crds/`, and the operator parses the objects it reads from the API server with them.

Conventions that the CRD generator relies on:
- Python names are snake_case; the wire names are the aliases (camelCase, Kubernetes style).
- Class docstrings and `Field(description=...)` become the schema descriptions that
  `kubectl explain` prints, so they are written for the user, not for us.
- Cross-field rules are CEL `x-kubernetes-validations` in `json_schema_extra`; each message
  names the field and says what would be accepted. The same rules are mirrored by pydantic
  validators so that the pure code (simulator, planner, tests) rejects what the API server
  rejects.
- Optional fields are `X | None = None`: absent on the wire, never `null`.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

GROUP = "dedicap.dev"
VERSION = "v1alpha1"
API_VERSION: Final = "dedicap.dev/v1alpha1"

# Child objects are named `<modeldeployment>-<pool>`; both parts are bounded so that the
# result is a valid DNS-1035 label (<= 63 characters), which a Service name must be.
MAX_MODELDEPLOYMENT_NAME = 42
MAX_POOL_NAME = 20
DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# Namespace names are DNS-1123 labels (they may start with a digit).
NAMESPACE_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A Kubernetes resource.Quantity that a container may request: the API server's own spelling
# without the minus sign (a negative request is refused when the Deployment is written).
QUANTITY = (r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
            r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
# Triton model names are directory names in the model repository.
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# Where Triton can read a model repository from: object stores it supports natively, an
# absolute path inside the image, or a PersistentVolumeClaim (`pvc://<claim>/<path>`).
MODEL_REPOSITORY = r"^(s3://|gs://|as://|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/|$)|/)"
# No credentials in it: a user:password@ part or a query string (a signed URL, a SAS token)
# would be copied into the Deployment's arguments, Events and logs. A CEL rule, not a pattern:
# the API server repeats a value that fails a pattern in its answer, never one that fails CEL.
REPOSITORY_CREDENTIALS = r"^[a-z0-9]+://[^/]*@"
REPOSITORY_HINT = ("spec.model.repository must not carry credentials (user:password@ or a "
                   "?query): put them in a Secret named by spec.triton.envFromSecret")
# Kubernetes label syntax: a key is an optional DNS-subdomain prefix and a name of at most 63
# characters; a value is empty or such a name. Node and namespace selectors are copied into
# children, where the API server checks exactly this.
LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
             rf"{LABEL_NAME}$")
LABEL_VALUE = rf"^({LABEL_NAME})?$"
MAX_LABEL_KEY = 253 + 1 + 63

DnsLabelName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
PoolName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_POOL_NAME,
        pattern=DNS_LABEL,
        description=(
            "Name of a GPUPool: a lowercase DNS label of at most "
            f"{MAX_POOL_NAME} characters, e.g. `h100`."
        ),
    ),
]
NamespaceName = Annotated[str, Field(min_length=1, max_length=63, pattern=NAMESPACE_NAME)]
Quantity = Annotated[str, Field(max_length=64, pattern=QUANTITY)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]


def _label_keys(labels: dict[str, str]) -> dict[str, str]:
    bad = [k for k in labels if len(k) > MAX_LABEL_KEY or not re.match(LABEL_KEY, k)]
    if bad:
        raise ValueError(f"label keys {bad!r} are not valid: a name of at most 63 characters "
                         "(letters, digits, '-', '_', '.'), optionally after a DNS prefix and '/'")
    return labels


def _labels_field(field_path: str, **kwargs: Any) -> Any:
    """A map of labels: keys checked by a CEL rule (a CRD schema cannot constrain map keys)."""
    rule = _cel(f"self.all(k, k.size() <= {MAX_LABEL_KEY} && k.matches('{LABEL_KEY}'))",
                f"{field_path}: every key must be a label key: a name of at most 63 characters "
                "(letters, digits, '-', '_', '.'), optionally after a DNS prefix and '/'")
    return Field(json_schema_extra={"x-kubernetes-validations": [rule]}, **kwargs)


Labels = Annotated[dict[str, LabelValue], AfterValidator(_label_keys)]


class _Model(BaseModel):
    """Common configuration: wire names are the aliases; unknown keys are ignored when reading
    (the API server already prunes or rejects them, per the CRD schema)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=False)

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it: aliases, absent optionals left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


_M = TypeVar("_M", bound=BaseModel)


def _cel(rule: str, message: str, field_path: str | None = None,
         reason: str = "FieldValueInvalid") -> dict[str, Any]:
    """One x-kubernetes-validations entry. `fieldPath` makes the API server report the error at
    the field a user must change instead of at the object holding the rule."""
    entry: dict[str, Any] = {"rule": rule, "message": message, "reason": reason}
    if field_path is not None:
        entry["fieldPath"] = field_path
    return entry


def _defaulted(model: type[_M]) -> Any:
    """A nested object that is always present: the API server fills it in (`default: {}`),
    so the defaults of its own fields apply even when a user leaves the whole object out."""
    return Field(default_factory=lambda: model.model_validate({}),
                 json_schema_extra={"default": {}})


# ----------------------------------------------------------------------------- shared pieces


class Toleration(_Model):
    """A toleration added to the pods placed on the pool (the same fields and rules as a
    Pod's)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _cel("(has(self.key) && self.key != '') || self.operator == 'Exists'",
             "spec.tolerations: a toleration without a key must use operator Exists"),
        _cel("self.operator != 'Exists' || !has(self.value) || self.value == ''",
             "spec.tolerations: operator Exists takes no value"),
        _cel("!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
             "spec.tolerations: tolerationSeconds needs effect NoExecute"),
    ]})

    key: str | None = Field(None, max_length=MAX_LABEL_KEY, pattern=f"^$|{LABEL_KEY}",
                            description=(
        "Taint key to tolerate (a label key); empty with operator Exists tolerates every "
        "taint."))
    operator: Literal["Exists", "Equal"] = Field(
        "Equal", description="`Exists` matches any value; `Equal` needs `value` to match.")
    value: str | None = Field(None, max_length=63, pattern=LABEL_VALUE,
                              description="Taint value for `Equal` (a label value).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; empty tolerates all effects.")
    toleration_seconds: int | None = Field(
        None, alias="tolerationSeconds", ge=0,
        description="For NoExecute: how long the pod stays bound after the taint appears.")

    @model_validator(mode="after")
    def _as_kubernetes_checks(self) -> Toleration:
        if not self.key and self.operator != "Exists":
            raise ValueError("a toleration without a key must use operator Exists")
        if self.operator == "Exists" and self.value:
            raise ValueError("operator Exists takes no value")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self

    def k8s(self) -> dict[str, Any]:
        return self.wire()


class Condition(_Model):
    """The state of one aspect of the object, in the Kubernetes condition convention."""

    type: str = Field(max_length=64, description="Ready, Progressing, Degraded, "
                      "CapacityConstrained, MetricsAvailable or SLOMet.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(
        None, alias="observedGeneration", ge=0,
        description="The metadata.generation of the spec this condition was computed from.")
    last_transition_time: datetime | None = Field(
        None, alias="lastTransitionTime", description="When status last changed.")
    reason: str = Field("", max_length=128,
                        description="CamelCase reason, stable for programs to match on.")
    message: str = Field("", max_length=32768,
                         description="What happened and, when it needs action, what to change.")


_CONDITIONS = "Conditions in the Kubernetes convention, one per type."
_OBSERVED_GENERATION = "The metadata.generation the operator last acted on."
_CONDITIONS_EXTRA: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


# ----------------------------------------------------------------------------- GPUPool


class GPUSpec(_Model):
    """The GPU every node of the pool carries."""

    product: str = Field(min_length=1, max_length=128, description=(
        "GPU product as the GPU feature discovery labels it (`nvidia.com/gpu.product`), e.g. "
        "`NVIDIA-H100-80GB-HBM3`."))
    memory_gib: float = Field(alias="memoryGiB", gt=0, le=4096, description=(
        "Memory of one GPU in GiB. A ModelDeployment whose `resources.gpuMemoryGiB` exceeds "
        "it is not placed on this pool."))
    per_node: int | None = Field(None, alias="perNode", ge=1, le=64, description=(
        "GPUs per node, when all nodes are alike. Informational: placement reads each node's "
        "allocatable `nvidia.com/gpu`."))


class GPUPoolSpec(_Model):
    """Which nodes form the pool, what GPU they carry and what a GPU-hour costs."""

    node_selector: Labels = _labels_field(
        "spec.nodeSelector", alias="nodeSelector", min_length=1, max_length=16, description=(
            "Labels a node must carry to belong to the pool; the pool's pods get it as their "
            "nodeSelector. At least one label."))
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=16, json_schema_extra={"x-kubernetes-list-type": "atomic"},
        description="Tolerations the pool's pods need, typically for the GPU nodes' taint.")
    gpu: GPUSpec
    price_per_gpu_hour: float = Field(0.0, alias="pricePerGPUHour", ge=0, le=1_000_000,
                                      description=(
        "Price of one GPU for one hour, in `currency`; used for cost accounting."))
    currency: str = Field("USD", min_length=3, max_length=3, pattern=r"^[A-Z]{3}$",
                          description="ISO 4217 currency code of `pricePerGPUHour`.")


class GPUPoolStatus(_Model):
    """GPU accounting of the pool, computed by the operator from Nodes and the Pods bound to
    them."""

    observed_generation: int | None = Field(None, alias="observedGeneration", ge=0,
                                            description=_OBSERVED_GENERATION)
    nodes: int = Field(0, ge=0, description="Nodes matching the pool's nodeSelector.")
    ready_nodes: int = Field(0, alias="readyNodes", ge=0,
                             description="Of those, Ready and schedulable.")
    total_gpus: int = Field(0, alias="totalGPUs", ge=0,
                            description="Sum of the nodes' `nvidia.com/gpu` capacity.")
    allocatable_gpus: int = Field(0, alias="allocatableGPUs", ge=0, description=(
        "Sum of the allocatable `nvidia.com/gpu` of Ready, schedulable nodes."))
    allocated_gpus: int = Field(0, alias="allocatedGPUs", ge=0, description=(
        "GPUs requested by the non-terminated pods bound to the pool's nodes."))
    reserved_gpus: int = Field(0, alias="reservedGPUs", ge=0, description=(
        "GPUs committed to admitted CapacityReservations on this pool."))
    free_gpus: int = Field(0, alias="freeGPUs", ge=0,
                           description="allocatableGPUs minus allocatedGPUs (never below 0).")
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=_CONDITIONS_EXTRA,
                                       description=_CONDITIONS)


class GPUPool(_Model):
    """A set of GPU nodes sold as one kind of capacity, e.g. every H100 node. Cluster-scoped."""

    KIND: ClassVar[str] = "GPUPool"
    api_version: Literal["dedicap.dev/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["GPUPool"] = "GPUPool"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: GPUPoolSpec
    status: GPUPoolStatus | None = None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))


# ----------------------------------------------------------------------------- ModelDeployment


def _no_credentials(uri: str) -> str:
    if re.match(REPOSITORY_CREDENTIALS, uri) or "?" in uri:
        raise ValueError(REPOSITORY_HINT)
    return uri


MetricsProfile = Literal["request", "vllm", "tensorrtllm"]
LLM_PROFILES: Final = ("vllm", "tensorrtllm")


class ModelSpec(_Model):
    """The model Triton serves."""

    # On the object, not the string: the API server's answer then says "object" where it would
    # otherwise repeat the refused value, credentials included.
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_cel(
        f"!self.repository.matches('{REPOSITORY_CREDENTIALS}') && "
        "!self.repository.contains('?')", REPOSITORY_HINT, ".repository")]})

    name: str = Field(min_length=1, max_length=128, pattern=MODEL_NAME, description=(
        "Model name: its directory in the model repository; Triton loads it with "
        "`--load-model` and reports readiness at `/v2/models/<name>/ready`."))
    repository: Annotated[str, AfterValidator(_no_credentials)] = Field(
        min_length=2, max_length=1024, pattern=MODEL_REPOSITORY, description=(
            "Model repository Triton reads: `s3://`, `gs://`, `as://` (Azure), an absolute path "
            "in the image, or `pvc://<claim>/<path>` to mount a PersistentVolumeClaim "
            "read-only. No credentials: those go in the Secret of `triton.envFromSecret`."))
    version: str | None = Field(None, max_length=32, pattern=r"^[0-9]+$", description=(
        "Model version to serve (a number). Changing it rolls the replicas; the model's "
        "version policy in its config decides what Triton loads."))
    backend: str | None = Field(None, max_length=64, pattern=r"^[a-z][a-z0-9_]*$", description=(
        "Triton backend, e.g. `tensorrtllm`, `python`, `onnxruntime` (informational)."))
    # The batcher's limits are facts of the model's config.pbtxt, which lives in the
    # repository and which no Triton metric carries: without the max batch the autoscaler can
    # only extrapolate the batches a replica forms, and believe it serves more than it can.
    max_batch_size: int | None = Field(None, alias="maxBatchSize", ge=1, le=1_000_000,
                                       description=(
        "The model's `max_batch_size`, as its config.pbtxt sets it. The autoscaler plans no "
        "batch larger; unset, it learns the largest batch from periods when the queues held "
        "more than a batch per replica, and until then allows 4x the largest batch seen."))
    max_queue_delay_microseconds: int | None = Field(
        None, alias="maxQueueDelayMicroseconds", ge=0, le=60_000_000, description=(
            "The dynamic batcher's `max_queue_delay_microseconds`, as the model's config.pbtxt "
            "sets it: part of every request's latency budget (unset: 2000)."))
    metrics_profile: MetricsProfile = Field(
        "request", alias="metricsProfile", json_schema_extra={"default": "request"},
        description=(
            "Which metrics the replicas publish, and so which objectives the autoscaler can "
            "keep: `request` (Triton's request-level metrics, any backend), `vllm` (a "
            "streaming LLM on Triton's vLLM backend: vLLM's own families, e.g. "
            "`vllm:time_to_first_token_seconds`, with custom metrics on) or `tensorrtllm` (a "
            "streaming LLM on the TensorRT-LLM backend: its `nv_trt_llm_*` families and "
            "Triton's time to first response). The LLM profiles allow token-level objectives "
            "(`autoscaling.slo.timeToFirstToken`, `timePerOutputToken`)."))


class EnvVar(_Model):
    """An environment variable of the Triton container."""

    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
                      description="Variable name.")
    value: str = Field("", max_length=4096, description="Variable value.")


class TritonSpec(_Model):
    """The Triton Inference Server container."""

    image: str = Field(
        "nvcr.io/nvidia/tritonserver:25.01-py3", min_length=1, max_length=512,
        pattern=r"^[^\s]+$",
        description="Triton image; changing it rolls the replicas.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", alias="imagePullPolicy", description="When the node pulls the image.")
    args: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list, max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
        description=("Extra tritonserver arguments, appended after the ones dedicap sets "
                     "(model repository, explicit model control, ports, summary latencies)."))
    env: list[EnvVar] = Field(default_factory=list, max_length=64, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Extra environment variables of the Triton container.")
    env_from_secret: DnsLabelName | None = Field(
        None, alias="envFromSecret",
        description="A Secret whose keys become environment variables, e.g. object store "
        "credentials.")
    startup_timeout_seconds: int = Field(
        600, alias="startupTimeoutSeconds", ge=30, le=7200, description=(
            "How long a replica may take to load the model before it is restarted."))


class ResourcesSpec(_Model):
    """What one replica needs."""

    gpus_per_replica: int = Field(1, alias="gpusPerReplica", ge=1, le=16, description=(
        "`nvidia.com/gpu` per replica (1-16); all of them on one node."))
    gpu_memory_gib: float = Field(0.0, alias="gpuMemoryGiB", ge=0, le=4096, description=(
        "GPU memory the model needs per GPU, in GiB; pools whose GPUs have less are skipped."))
    cpu: Quantity = Field("2", description="CPU request (and no limit), e.g. `4` or `500m`.")
    memory: Quantity = Field("8Gi", description="Memory request and limit, e.g. `16Gi`.")


class SpreadSpec(_Model):
    """How replicas spread over failure domains."""

    max_skew: int = Field(1, alias="maxSkew", ge=1, le=100,
                          description="Largest allowed difference in replicas between domains.")
    when_unsatisfiable: Literal["ScheduleAnyway", "DoNotSchedule"] = Field(
        "ScheduleAnyway", alias="whenUnsatisfiable", description=(
            "`ScheduleAnyway` prefers spreading; `DoNotSchedule` keeps replicas Pending rather "
            "than co-locating them."))


class PlacementSpec(_Model):
    """Where replicas may run."""

    pools: list[PoolName] = Field(
        min_length=1, max_length=8, json_schema_extra={"x-kubernetes-list-type": "set"},
        description=("GPUPools in order of preference: replicas go to the first pool with room "
                     "and enough GPU memory, then the next."))
    spread: SpreadSpec = _defaulted(SpreadSpec)


class LatencySLO(_Model):
    """Latency objective: the given percentile of request latency stays under targetMs."""

    percentile: float = Field(95.0, gt=0, lt=100, description=(
        "Latency percentile, strictly between 0 and 100, e.g. 95 or 99."))
    target_ms: float = Field(alias="targetMs", gt=0, le=3_600_000,
                             description="Latency target in milliseconds (> 0).")


class ErrorRateSLO(_Model):
    """Reliability objective: failed requests / all requests stays at or under max."""

    maximum: float = Field(alias="max", ge=0, le=1, description=(
        "Largest acceptable error ratio, between 0 and 1, e.g. 0.001 for 0.1%."))


class TokenLatencySLO(_Model):
    """A token-level latency objective of a streaming LLM: the given percentile stays under
    targetMs."""

    percentile: float = Field(95.0, gt=0, lt=100, description=(
        "Percentile, strictly between 0 and 100, e.g. 95 or 99 (of requests for the time to "
        "first token, of generated tokens for the time per output token)."))
    target_ms: float = Field(alias="targetMs", gt=0, le=600_000,
                             description="Target in milliseconds (> 0).")


class SLOSpec(_Model):
    """Service level objective the autoscaler keeps."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_cel(
        "has(self.latency) || has(self.errorRate) || has(self.timeToFirstToken) || "
        "has(self.timePerOutputToken)",
        "spec.autoscaling.slo needs at least one of `latency`, `errorRate`, "
        "`timeToFirstToken`, `timePerOutputToken`", None, "FieldValueRequired")]})

    latency: LatencySLO | None = Field(None, description=(
        "Request latency: Triton's whole request (for a streaming LLM, until its last token)."))
    error_rate: ErrorRateSLO | None = Field(None, alias="errorRate")
    time_to_first_token: TokenLatencySLO | None = Field(
        None, alias="timeToFirstToken", description=(
            "Time to first token of a streaming LLM (needs spec.model.metricsProfile `vllm` or "
            "`tensorrtllm`): from the request's arrival to its first token, queueing and "
            "prefill included."))
    time_per_output_token: TokenLatencySLO | None = Field(
        None, alias="timePerOutputToken", description=(
            "Time per output token of a streaming LLM after its first (needs "
            "spec.model.metricsProfile `vllm`: TensorRT-LLM's backend publishes no per-token "
            "latency)."))

    @property
    def token_level(self) -> bool:
        return self.time_to_first_token is not None or self.time_per_output_token is not None

    @model_validator(mode="after")
    def _something_to_keep(self) -> SLOSpec:
        if (self.latency is None and self.error_rate is None
                and not self.token_level):
            raise ValueError("spec.autoscaling.slo needs at least one of `latency`, "
                             "`errorRate`, `timeToFirstToken`, `timePerOutputToken`")
        return self


class ScalingRules(_Model):
    """Limits on one scaling direction."""

    stabilization_window_seconds: int | None = Field(
        None, alias="stabilizationWindowSeconds", ge=0, le=3600, description=(
            "The autoscaler acts on the most conservative recommendation of this window."))
    max_step_replicas: int | None = Field(
        None, alias="maxStepReplicas", ge=1, le=1000,
        description="Most replicas added or removed in one decision.")
    max_step_percent: int | None = Field(None, alias="maxStepPercent", ge=1, le=1000, description=(
        "Most replicas added or removed in one decision, as a percentage of the current count."))


class Behavior(_Model):
    """How fast the autoscaler may move; unset fields take the policy's defaults."""

    scale_up: ScalingRules | None = Field(None, alias="scaleUp")
    scale_down: ScalingRules | None = Field(None, alias="scaleDown")
    evaluation_interval_seconds: int | None = Field(
        None, alias="evaluationIntervalSeconds", ge=5, le=600,
        description="How often the autoscaler evaluates the SLO.")


class AutoscalingSpec(_Model):
    """SLO autoscaling. When set, the autoscaler owns `spec.replicas` and writes it through the
    scale subresource, keeping it within [minReplicas, maxReplicas]."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_cel(
        "self.minReplicas <= self.maxReplicas",
        "spec.autoscaling.minReplicas must be less than or equal to maxReplicas",
        ".minReplicas")]})

    min_replicas: int = Field(1, alias="minReplicas", ge=0, le=1000,
                              description="Fewest replicas (0 allows scaling to zero).")
    max_replicas: int = Field(alias="maxReplicas", ge=1, le=1000, description="Most replicas.")
    slo: SLOSpec
    behavior: Behavior | None = None

    @model_validator(mode="after")
    def _min_le_max(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("spec.autoscaling.minReplicas must be less than or equal to "
                             "maxReplicas")
        return self


class NamespaceSelector(_Model):
    """Namespaces selected by their labels."""

    match_labels: Labels = _labels_field(
        "spec.access.namespaceSelector.matchLabels", alias="matchLabels", min_length=1,
        max_length=16,
        description="Labels a namespace must carry, all of them.")


class AccessSpec(_Model):
    """Who may call the model. Pods of the ModelDeployment's own namespace always may; the
    NetworkPolicy dedicap writes admits these as well and nobody else."""

    namespaces: list[NamespaceName] = Field(
        default_factory=list, max_length=64, json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Further namespaces whose pods may call the model's HTTP and gRPC ports.")
    namespace_selector: NamespaceSelector | None = Field(
        None, alias="namespaceSelector",
        description="Namespaces, by label, whose pods may call the model.")


_TOKEN_SLO_NEEDS_LLM = (
    "spec.autoscaling.slo.timeToFirstToken and timePerOutputToken need spec.model."
    "metricsProfile `vllm` or `tensorrtllm`: a request-level model publishes no token latency")
_TPOT_NEEDS_VLLM = (
    "spec.autoscaling.slo.timePerOutputToken needs spec.model.metricsProfile `vllm`: "
    "TensorRT-LLM's backend publishes no per-token latency (use timeToFirstToken)")


class ModelDeploymentSpec(_Model):
    """Desired state of a private model deployment."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _cel("!has(self.autoscaling) || !has(self.replicas) || "
             "(self.replicas >= self.autoscaling.minReplicas && "
             "self.replicas <= self.autoscaling.maxReplicas)",
             "spec.replicas must be within [spec.autoscaling.minReplicas, "
             "spec.autoscaling.maxReplicas] when autoscaling is set", ".replicas"),
        _cel("!has(self.autoscaling) || (!has(self.autoscaling.slo.timeToFirstToken) && "
             "!has(self.autoscaling.slo.timePerOutputToken)) || "
             "(has(self.model.metricsProfile) && self.model.metricsProfile != 'request')",
             _TOKEN_SLO_NEEDS_LLM, ".model.metricsProfile"),
        _cel("!has(self.autoscaling) || !has(self.autoscaling.slo.timePerOutputToken) || "
             "!has(self.model.metricsProfile) || self.model.metricsProfile != 'tensorrtllm'",
             _TPOT_NEEDS_VLLM, ".autoscaling.slo.timePerOutputToken"),
    ]})

    model: ModelSpec
    triton: TritonSpec = _defaulted(TritonSpec)
    resources: ResourcesSpec = _defaulted(ResourcesSpec)
    placement: PlacementSpec
    reservation: DnsLabelName | None = Field(None, description=(
        "CapacityReservation whose GPUs the replicas use first."))
    replicas: int | None = Field(None, ge=0, le=1000, description=(
        "Desired replicas. Unset: autoscaling.minReplicas, or 1 without autoscaling. With "
        "autoscaling the autoscaler writes it (as the HPA does for a Deployment); "
        "`kubectl scale` writes it through the scale subresource."))
    autoscaling: AutoscalingSpec | None = None
    access: AccessSpec = _defaulted(AccessSpec)

    @model_validator(mode="after")
    def _replicas_within_bounds(self) -> ModelDeploymentSpec:
        a = self.autoscaling
        if a is not None and self.replicas is not None and not (
                a.min_replicas <= self.replicas <= a.max_replicas):
            raise ValueError("spec.replicas must be within [spec.autoscaling.minReplicas, "
                             "spec.autoscaling.maxReplicas] when autoscaling is set")
        return self

    @model_validator(mode="after")
    def _token_objectives_need_an_llm_profile(self) -> ModelDeploymentSpec:
        slo = self.autoscaling.slo if self.autoscaling is not None else None
        if slo is not None and slo.token_level and self.model.metrics_profile == "request":
            raise ValueError(_TOKEN_SLO_NEEDS_LLM)
        if (slo is not None and slo.time_per_output_token is not None
                and self.model.metrics_profile == "tensorrtllm"):
            raise ValueError(_TPOT_NEEDS_VLLM)
        return self

    @property
    def llm(self) -> bool:
        """Whether the replicas serve a streaming LLM (a token-level metrics profile)."""
        return self.model.metrics_profile in LLM_PROFILES

    def desired_replicas(self) -> int:
        """The replica count the operator runs: spec.replicas, else the autoscaling floor, else
        one."""
        if self.replicas is not None:
            return self.replicas
        if self.autoscaling is not None:
            return self.autoscaling.min_replicas
        return 1


class PoolPlacementStatus(_Model):
    """Replicas of this ModelDeployment on one pool."""

    pool: str = Field(max_length=MAX_POOL_NAME, description="GPUPool name.")
    replicas: int = Field(0, ge=0, description="Replicas placed on the pool (desired).")
    current_replicas: int = Field(0, alias="currentReplicas", ge=0,
                                  description="Replicas that exist on the pool.")
    ready_replicas: int = Field(0, alias="readyReplicas", ge=0,
                                description="Ready replicas on the pool.")
    gpus: int = Field(0, ge=0, description="GPUs requested by the placed replicas.")


class ObservedMetrics(_Model):
    """What the autoscaler last read from Prometheus."""

    p95_ms: float | None = Field(None, alias="p95Ms", ge=0, description="95th percentile latency.")
    latency_ms: float | None = Field(None, alias="latencyMs", ge=0, description=(
        "Latency at the SLO's percentile."))
    error_ratio: float | None = Field(None, alias="errorRatio", ge=0, le=1,
                                      description="Failed / all requests.")
    request_rate: float | None = Field(None, alias="requestRate", ge=0,
                                       description="Requests per second.")
    ttft_ms: float | None = Field(None, alias="ttftMs", ge=0, description=(
        "A streaming LLM's time to first token at the SLO's percentile (95 without one), ms."))
    tpot_ms: float | None = Field(None, alias="tpotMs", ge=0, description=(
        "A streaming LLM's time per output token at the SLO's percentile (95 without one), "
        "ms."))
    prompt_tokens_per_second: float | None = Field(
        None, alias="promptTokensPerSecond", ge=0, description="Prompt tokens prefilled per "
        "second, all replicas.")
    generation_tokens_per_second: float | None = Field(
        None, alias="generationTokensPerSecond", ge=0, description="Tokens generated per "
        "second, all replicas.")
    kv_cache_usage: float | None = Field(None, alias="kvCacheUsage", ge=0, le=1, description=(
        "The fullest replica's KV-cache usage, 0 to 1."))
    waiting_requests: float | None = Field(None, alias="waitingRequests", ge=0, description=(
        "Requests waiting for room in the replicas' batches (KV cache or sequence limit)."))
    sampled_at: datetime | None = Field(None, alias="sampledAt",
                                        description="Time of the observation.")


class TokenCapacity(_Model):
    """What a streaming LLM's replicas serve within its token-level SLO, learned from its own
    metrics: the figure provisioned-throughput offerings sell (tokens per minute)."""

    prompt_tokens_per_second: float = Field(0.0, alias="promptTokensPerSecond", ge=0,
                                            description="Prompt tokens per second, one replica.")
    generation_tokens_per_second: float = Field(
        0.0, alias="generationTokensPerSecond", ge=0,
        description="Generated tokens per second, one replica.")
    tokens_per_minute_per_replica: float = Field(
        0.0, alias="tokensPerMinutePerReplica", ge=0,
        description="Prompt and generated tokens per minute, one replica.")
    tokens_per_minute_per_gpu: float = Field(0.0, alias="tokensPerMinutePerGPU", ge=0,
                                             description="The same per GPU.")
    tokens_per_minute: float = Field(0.0, alias="tokensPerMinute", ge=0, description=(
        "Prompt and generated tokens per minute the ready replicas serve within the SLO."))
    limited_by: str = Field("", alias="limitedBy", max_length=64, description=(
        "What bounds a replica: `timePerOutputToken`, `timeToFirstToken`, `kvCache` or "
        "`maxSequences`."))
    measured_at: datetime | None = Field(None, alias="measuredAt",
                                         description="When it was last learned.")


class RequestCapacity(_Model):
    """What one replica of a request-level model serves within the SLO, learned from its own
    metrics: what the autoscaler plans with, and what a reservation's size follows from."""

    requests_per_second_per_replica: float = Field(
        0.0, alias="requestsPerSecondPerReplica", ge=0, description=(
            "Requests per second the autoscaler plans one replica to serve within the SLO."))
    requests_per_second_per_gpu: float = Field(0.0, alias="requestsPerSecondPerGPU", ge=0,
                                               description="The same per GPU.")
    requests_per_second: float = Field(0.0, alias="requestsPerSecond", ge=0, description=(
        "Requests per second the ready replicas serve within the SLO."))
    saturated_requests_per_second: float = Field(
        0.0, alias="saturatedRequestsPerSecond", ge=0, description=(
            "Requests per second one replica serves running the largest batches that keep "
            "the latency target back to back (the plan is a share of it)."))
    planned_share: float = Field(0.0, alias="plannedShare", ge=0, le=1, description=(
        "The share of saturatedRequestsPerSecond planned before the latency and error-budget "
        "feedback: the autoscaler's utilization, or the latency knee of the replica's max "
        "batch where that is lower."))
    max_batch_size: int | None = Field(None, alias="maxBatchSize", ge=1, description=(
        "The model's max batch in requests: spec.model.maxBatchSize, or learned from full "
        "batches (maxBatchSource)."))
    max_batch_source: Literal["", "spec", "learned"] = Field(
        "", alias="maxBatchSource", description=(
            "`spec`, `learned` (queues deeper than a batch per replica for a whole rate "
            "window), or empty while unknown."))
    measured_at: datetime | None = Field(None, alias="measuredAt",
                                         description="When it was last learned.")


class ScaleDecision(_Model):
    """The autoscaler's last change of the replica count."""

    time: datetime | None = Field(None, description="When the decision was applied.")
    from_replicas: int = Field(0, alias="fromReplicas", ge=0, description="Replicas before.")
    to_replicas: int = Field(0, alias="toReplicas", ge=0, description="Replicas after.")
    reason: str = Field("", max_length=128, description="CamelCase reason, e.g. LatencyAboveSLO.")
    message: str = Field("", max_length=4096, description="The numbers behind the decision.")


class CostStatus(_Model):
    """GPU usage and its cost, from the pools' prices."""

    gpus: int = Field(0, ge=0, description=(
        "GPUs requested by the replicas at the last observation (held since accountedAt)."))
    gpu_hours: float = Field(0.0, alias="gpuHours", ge=0, description=(
        "GPU-hours accumulated from `since` to `accountedAt`."))
    hourly_cost: float = Field(0.0, alias="hourlyCost", ge=0,
                               description="Cost per hour at the current GPU count.")
    currency: str | None = Field(None, max_length=3, description="Currency of the costs.")
    since: datetime | None = Field(None, description="Start of the gpuHours accumulation.")
    accounted_at: datetime | None = Field(None, alias="accountedAt", description=(
        "The instant up to which gpuHours is integrated. From it on, `gpus` GPUs count as "
        "held until the next observation, also while the operator is down: a restarted "
        "operator charges the time since accountedAt at `gpus`."))


class AutoscalerMemory(_Model):
    """What the autoscaler learned and must not forget: the policy's state, saved so that a
    restarted operator, or the one taking over, continues from it. Only the operator writes it
    (through the status subresource, which tenants cannot write); it is checked when read, and
    an unreadable one is replaced by a fresh start with a Warning Event."""

    state: str = Field("", max_length=65536, description=(
        "The policy's state as JSON (learned capacity per replica, latency gain, error budget, "
        "burst memory, recent decisions), in the format `version`."))
    version: int = Field(1, ge=1, le=1000, description="Format of `state`.")
    saved_at: datetime | None = Field(None, alias="savedAt", description=(
        "When `state` was saved."))


class ModelDeploymentStatus(_Model):
    """Observed state, written by the operator."""

    observed_generation: int | None = Field(None, alias="observedGeneration", ge=0,
                                            description=_OBSERVED_GENERATION)
    replicas: int = Field(0, ge=0, description="All replicas that exist, on every pool "
                          "(the scale subresource's status.replicas).")
    ready_replicas: int = Field(0, alias="readyReplicas", ge=0,
                                description="Replicas whose model is loaded and ready.")
    updated_replicas: int = Field(0, alias="updatedReplicas", ge=0,
                                  description="Replicas running the current spec.")
    desired_replicas: int = Field(0, alias="desiredReplicas", ge=0, description=(
        "Replicas the operator is running towards (spec.replicas or its default)."))
    selector: str = Field("", max_length=1024,
                          description="Label selector of the replicas' pods (for the scale "
                          "subresource).")
    pools: str = Field("", max_length=256, description="Pools in use, comma-separated.")
    placement: list[PoolPlacementStatus] = Field(default_factory=list, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["pool"]},
        description="Replicas per pool.")
    observed: ObservedMetrics | None = None
    token_capacity: TokenCapacity | None = Field(None, alias="tokenCapacity", description=(
        "A streaming LLM's token capacity within its SLO (once measured)."))
    request_capacity: RequestCapacity | None = Field(None, alias="requestCapacity", description=(
        "A request-level model's capacity within its SLO (once measured)."))
    last_scale: ScaleDecision | None = Field(None, alias="lastScale")
    cost: CostStatus | None = None
    autoscaler: AutoscalerMemory | None = None
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=_CONDITIONS_EXTRA,
                                       description=_CONDITIONS)


class ModelDeployment(_Model):
    """Private replicas of one model served by Triton on dedicated GPUs, kept inside an SLO.
    Namespaced: the namespace is the tenant."""

    KIND: ClassVar[str] = "ModelDeployment"
    api_version: Literal["dedicap.dev/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", ""))

    @property
    def uid(self) -> str:
        return str(self.metadata.get("uid", ""))

    @property
    def generation(self) -> int:
        return int(self.metadata.get("generation", 0) or 0)


# ----------------------------------------------------------------------------- CapacityReservation


class BurstSpec(_Model):
    """Borrowing of unreserved GPUs, at lower priority (preemptible)."""

    max_gpus: int = Field(alias="maxGPUs", ge=0, le=100_000,
                          description="Most GPUs borrowed beyond `gpus`.")
    pools: list[PoolName] = Field(
        default_factory=list, max_length=8, json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Pools to borrow from; empty means the reservation's own pool.")


class ValidityWindow(_Model):
    """When a reservation holds."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_cel(
        "!has(self.notBefore) || !has(self.notAfter) || "
        "self.notBefore < self.notAfter",
        "spec.window.notBefore must be earlier than spec.window.notAfter", ".notAfter")]})

    not_before: datetime | None = Field(None, alias="notBefore",
                                        description="Start of the reservation (RFC 3339).")
    not_after: datetime | None = Field(None, alias="notAfter",
                                       description="End of the reservation (RFC 3339).")

    @model_validator(mode="after")
    def _ordered(self) -> ValidityWindow:
        if (self.not_before is not None and self.not_after is not None
                and not self.not_before < self.not_after):
            raise ValueError("spec.window.notBefore must be earlier than spec.window.notAfter")
        return self


class CapacityReservationSpec(_Model):
    """GPUs of one pool committed to a tenant's namespaces."""

    namespaces: list[NamespaceName] = Field(
        min_length=1, max_length=64, json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Tenant namespaces whose ModelDeployments may use the reservation.")
    pool: PoolName
    gpus: int = Field(ge=0, le=100_000, description="Committed GPUs.")
    burst: BurstSpec | None = None
    window: ValidityWindow | None = None


class ReservationTokenCapacity(_Model):
    """One streaming LLM's token capacity on a reservation."""

    model_deployment: str = Field(alias="modelDeployment", max_length=128,
                                  description="`<namespace>/<name>` of the ModelDeployment.")
    tokens_per_minute_per_gpu: float = Field(0.0, alias="tokensPerMinutePerGPU", ge=0,
                                             description="Within its SLO, per GPU.")
    tokens_per_minute: float = Field(0.0, alias="tokensPerMinute", ge=0, description=(
        "Within its SLO, on the reserved GPUs its replicas use now."))
    tokens_per_minute_reserved: float = Field(
        0.0, alias="tokensPerMinuteReserved", ge=0,
        description="Within its SLO, were all the reservation's GPUs running it.")


class CapacityReservationStatus(_Model):
    """Usage of the reservation."""

    observed_generation: int | None = Field(None, alias="observedGeneration", ge=0,
                                            description=_OBSERVED_GENERATION)
    admitted: bool = Field(False, description="Whether the pool had room for the commitment.")
    used_gpus: int = Field(0, alias="usedGPUs", ge=0,
                           description="Reserved GPUs requested by the tenant's replicas.")
    burst_gpus: int = Field(0, alias="burstGPUs", ge=0, description="Borrowed GPUs in use.")
    headroom_gpus: int = Field(0, alias="headroomGPUs", ge=0,
                               description="Reserved GPUs not in use.")
    message: str = Field("", max_length=4096, description="Why it is or is not admitted.")
    token_capacity: list[ReservationTokenCapacity] = Field(
        default_factory=list, alias="tokenCapacity", max_length=64, json_schema_extra={
            "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["modelDeployment"]},
        description=("What the reservation's GPUs buy in tokens, per streaming LLM using it, "
                     "at that model's measured capacity within its SLO."))
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=_CONDITIONS_EXTRA,
                                       description=_CONDITIONS)


class CapacityReservation(_Model):
    """A tenant's committed GPUs in a pool. Cluster-scoped so that tenants cannot mint their
    own."""

    KIND: ClassVar[str] = "CapacityReservation"
    api_version: Literal["dedicap.dev/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["CapacityReservation"] = "CapacityReservation"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: CapacityReservationSpec
    status: CapacityReservationStatus | None = None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))
