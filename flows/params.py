"""The groups of ``train_pipeline``'s parameters: each a pydantic model, so the Prefect run form
shows every field with its description and validates it before the run starts."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Positive = Annotated[int, Field(ge=1)]
NotNegative = Annotated[int, Field(ge=0)]


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LaunchParams(_Group):
    """How training runs: processes, machines, restarts and retries."""

    nproc_per_node: Positive | Literal["auto"] = Field(
        "auto",
        description="training processes per machine; auto: one per GPU, one process with all "
        "cores on an AVX-512 CPU, two on an AVX2 CPU (bench/RESULTS.md)",
    )
    nnodes: Positive = Field(
        1, description="machines in the job; more than 1 needs rdzv_endpoint (c10d rendezvous)"
    )
    rdzv_endpoint: str | None = Field(
        None, description="HOST:PORT of the c10d rendezvous for multi-node training"
    )
    local_addr: str | None = Field(
        None, description="this node's address for the rendezvous (multi-homed hosts)"
    )
    socket_ifname: str | None = Field(
        None,
        description="network interface for gloo/NCCL traffic (GLOO_SOCKET_IFNAME, "
        "NCCL_SOCKET_IFNAME)",
    )
    max_restarts: NotNegative = Field(
        0,
        description="torchrun restarts of the worker group inside one attempt (each resumes "
        "from a checkpoint)",
    )
    retries: NotNegative = Field(
        2, description="retries of the train_model task (each resumes from the newest checkpoint)"
    )
    retry_delay_s: Annotated[float, Field(ge=0)] = Field(
        10.0, description="first retry delay; it doubles for each further retry"
    )

    def retry_delays_s(self) -> list[float]:
        return [self.retry_delay_s * 2**i for i in range(max(self.retries, 1))]


class SamplingParams(_Group):
    """The samples written after training (samples.txt, the report, W&B)."""

    prompts: list[str] = Field(["\n"], description="prompts the samples start from")
    num_samples: Positive = Field(2, description="samples per prompt, generated as one batch")
    length: Positive = Field(300, description="characters per sample")
    temperature: Annotated[float, Field(gt=0)] = Field(0.8, description="sampling temperature")


class StorageParams(_Group):
    """Where runs and production models live."""

    runs_dir: str = Field(
        "runs", description="where run directories (<date>-<flow run name>/) are created"
    )
    registry_dir: str = Field(
        "runs/registry",
        description="the champion/challenger registry: a production.json per model line, and "
        "the promoted checkpoints",
    )


class TrackingParams(_Group):
    """Where the run's metrics, samples and checkpoints are tracked."""

    wandb_mode: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="auto: online with W&B credentials, else offline"
    )
    wandb_project: str = Field("charrnn", description="W&B project")
