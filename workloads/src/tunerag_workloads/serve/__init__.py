"""The serving workload: a base model with LoRA adapters (peft), optional retrieval from a
VectorIndex and an exchange log, behind KServe's health and v1 routes and OpenAI's completions.

    python -m tunerag_workloads.serve       # inside a KServe InferenceService predictor

Configuration and contract: docs/serving.md. Library use: `server.build(config, database_url,
work_dir)` loads a `Responder`, and `app.create_app(responder)` is its ASGI application.
"""

from tunerag_workloads.serve.config import ServeConfig, load_config

__all__ = ["ServeConfig", "load_config"]
