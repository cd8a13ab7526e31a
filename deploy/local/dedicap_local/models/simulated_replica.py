"""A Triton Python-backend model that behaves like one GPU replica of a served model.

Triton's dynamic batcher hands `execute` a batch of requests; the model holds the (single)
instance busy for a service time per batch

    t(b) = base_ms + per_item_ms * b        (b = rows in the batch, at most max_batch_size)

so, as on a GPU, a replica's throughput saturates at max_batch_size / t(max_batch_size) and,
past that point, requests wait in Triton's queue and latency grows with load (the measured H200
replicas in the calibration follow the same shape). Sleeping holds no CPU, so many replicas can
run side by side on a small machine.

Behaviour comes from the model configuration's `parameters` and may be changed while the model
runs through a JSON control file (the parameter `control_file`), read at most twice a second:

- `base_ms`, `per_item_ms`: the service time above (floats, milliseconds).
- `fail_ratio`: the fraction of requests answered with an error (0..1). Triton counts them in
  `nv_inference_request_failure{reason="BACKEND"}`: a broken model, not a lack of capacity.
- `jitter`: relative random variation of the service time (0.1 = +-10 %).

The model returns its input unchanged as OUTPUT (FP32), so a client can check the round trip.

This file is copied into each generated model repository as `<model>/1/model.py`; the pure
parts (parameters, service time) are importable without Triton for unit tests.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from dedicap_local.models.control import ControlFile, parameter, with_overrides

try:  # only inside Triton's Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported for its pure parts (tests, docs)
    pb_utils = None

INPUT_NAME = "INPUT"
OUTPUT_NAME = "OUTPUT"
_CONTROL_FILE_PERIOD_S = 0.5


@dataclass(frozen=True)
class Behaviour:
    base_ms: float = 20.0
    per_item_ms: float = 5.0
    fail_ratio: float = 0.0
    jitter: float = 0.0

    def service_time_s(self, batch: int, rng: random.Random | None = None) -> float:
        ms = self.base_ms + self.per_item_ms * max(batch, 0)
        if self.jitter > 0 and rng is not None:
            ms *= 1.0 + rng.uniform(-self.jitter, self.jitter)
        return max(ms, 0.0) / 1000.0

    def with_overrides(self, values: dict[str, Any]) -> Behaviour:
        """A copy with the known keys of `values` applied; malformed values are ignored."""
        return with_overrides(self, values)


def behaviour_from_parameters(parameters: dict[str, Any]) -> Behaviour:
    """Read a Behaviour from a Triton model config's `parameters` ({key: {string_value: ...}})."""
    flat = {key: (value.get("string_value") if isinstance(value, dict) else value)
            for key, value in parameters.items()}
    return Behaviour().with_overrides(flat)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {}) or {}
        self._configured = behaviour_from_parameters(parameters)
        self._control = ControlFile(parameter(parameters, "control_file"),
                                    _CONTROL_FILE_PERIOD_S)
        self._behaviour = self._configured
        self._rng = random.Random(os.getpid())

    def _refresh(self) -> None:
        # twice a second at most: cheap, and lets tests switch a running model to failing
        if self._control.poll():
            self._behaviour = self._configured.with_overrides(self._control.values)

    def execute(self, requests: list[Any]) -> list[Any]:
        self._refresh()
        behaviour = self._behaviour
        inputs = [pb_utils.get_input_tensor_by_name(r, INPUT_NAME).as_numpy() for r in requests]
        batch = sum(int(x.shape[0]) if x.ndim else 1 for x in inputs)
        time.sleep(behaviour.service_time_s(batch, self._rng))
        # Triton 2.51 counts an error *response* as a success; only an exception raised from
        # execute() fails the batch's requests with reason BACKEND. So a failure takes down the
        # whole batch, with probability fail_ratio.
        if behaviour.fail_ratio > 0 and self._rng.random() < behaviour.fail_ratio:
            raise RuntimeError("simulated model failure (fail_ratio)")
        return [pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(OUTPUT_NAME, data.astype("float32"))])
                for data in inputs]

    def finalize(self) -> None:
        return None
