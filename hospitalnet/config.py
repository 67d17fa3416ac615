"""Typed experiment configuration, validated when it is loaded.

Defaults live here, documented field by field. A YAML file under ``configs/`` only sets what
differs from them (and says why in a comment). Unknown keys are rejected; every error names the
file and the dotted key, e.g. ``configs/quick.yaml: training.batch_size: Input should be > 0``.
Names (methods, models, topologies, loaders) are resolved through explicit registries, never by
importing a string.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from hospitalnet.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class WorldConfig(Section):
    """The built-in synthetic ChestX-ray14 world (``hospitalnet synth``)."""

    patients: int = Field(3000, gt=0, description="synthetic patients in the pooled data set")
    seed: int | None = Field(
        None,
        ge=0,
        description="seed of the world (generation, partition, storage), separate from the "
        "training seed so that training seeds can be paired on one world; None = the run's seed",
    )
    image_size: int = Field(128, ge=32, le=1024, description="PNG side length in pixels")
    cache_dir: str | None = Field(
        None,
        description="where the world is generated once and reused; None = ~/.cache/hospitalnet",
    )
    root: str | None = Field(
        None,
        description="an already partitioned data set to train on instead of the synthetic "
        "world: the --out folder of `hospitalnet partition` (partition.json, sites/); ~ and "
        "${VAR} are expanded; None = the built-in synthetic world",
    )

    @model_validator(mode="after")
    def _seed_needs_synthetic(self) -> WorldConfig:
        if self.seed is not None and self.root is not None:
            raise ValueError("world.seed makes a synthetic world; it has no effect with world.root")
        return self


class PartitionConfig(Section):
    """How the pooled data set is split into sites (``hospitalnet partition``)."""

    profile: str = Field("default", description="site profile: default | strong (data.profiles)")
    skew: float = Field(1.0, ge=0.0, description="0 = IID sites, 1 = the profile, >1 = stronger")
    local_test_fraction: float = Field(0.2, gt=0.0, lt=1.0)


class DataConfig(Section):
    image_size: int = Field(64, ge=16, le=1024, description="model input side length in pixels")


class ModelConfig(Section):
    name: str = Field("smallcnn", description="registry name: smallcnn | resnet18 | densenet121")
    width: int = Field(16, gt=0, description="base channel count of smallcnn")
    groups: int = Field(8, gt=0, description="GroupNorm groups")


def _thread_setting(value: Any) -> Any:
    """``training.threads``: a whole number >= 1, ``auto`` or null, said in one message."""
    if value is None or value == "auto":
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f"expected a whole number >= 1, 'auto' or null, got {value!r}")


class TrainingConfig(Section):
    # Defaults chosen by probes on the synthetic world (README "Results" has the training-length
    # sweep: the default is far from converged, to fit 5 minutes): sequential steps buy more
    # AUROC than larger batches here, so sites take many small-batch steps at a large step size.
    batch_size: int = Field(16, gt=0, description="images per local step (pooled: x n_sites)")
    local_steps: int = Field(
        500, gt=0, description="local steps per site; pooled takes as many, n_sites x larger"
    )
    lr: float = Field(0.2, gt=0, description="step size mu")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine: decay from lr to lr * lr_final_fraction over the steps"
    )
    lr_final_fraction: float = Field(0.05, gt=0, le=1, description="cosine schedule's last step")
    weight_decay: float = Field(1e-4, ge=0, description="added to the loss as 0.5*wd*||w||^2")
    eval_points: int = Field(10, ge=1, description="evaluations along training (learning curves)")
    device: str = Field("cpu", description="cpu | cuda | auto")
    threads: Annotated[int | Literal["auto"] | None, BeforeValidator(_thread_setting)] = Field(
        "auto",
        description="torch CPU threads for this process: auto (default) follows the cores other "
        "processes leave idle, all of them on an idle machine and one beside other work, without "
        "changing the result (hospitalnet.threads); a number fixes it; None: torch's default, "
        "one per core",
    )
    site_weighting: Literal["samples", "uniform"] = Field(
        "samples",
        description="every method alike: samples = the pooled objective sum_i p_i f_i (ECL, "
        "gossip: loss scaled by N p_i; FedAvg, FedProx: server average weighted by n_i); "
        "uniform = every site counts the same",
    )


class ECLConfig(Section):
    """``ecl`` (two-way exchange) reads the first three keys; the PDMM variants (``ecl-pdmm``,
    ``ecl-pdmm-damped``, ``ecl-relaxed-pdmm``, ``ecl-isvr``) the rest."""

    dual_gain: float = Field(
        0.3,
        ge=0,
        description="ecl: integral gain kappa of the edge dual per exchange, times the edge's "
        "Metropolis-Hastings weight",
    )
    dual_warmup_steps: int | None = Field(
        None,
        ge=0,
        description="ecl: local steps over which the dual gain ramps up from 0; "
        "None = a quarter of the site's local steps",
    )
    mixing_scale: float = Field(
        1.0, gt=0, description="ecl: multiplies the Metropolis-Hastings pairwise weight"
    )
    theta: float = Field(
        0.8, gt=0, le=1, description="PDMM variants: relaxation of the received dual"
    )
    eta: float | Literal["auto"] = Field(
        "auto", description="PDMM variants: coupling; auto = ISVR rule"
    )
    rho: float = Field(0.0, ge=0, description="PDMM variants: proximity to received models")
    eta_scaling: Literal["none", "sqrt_fan_in"] = Field(
        "none", description="PDMM variants: sqrt_fan_in = eta per tensor x sqrt(fan-in) (KDD code)"
    )
    dual_init: Literal["model", "zero"] = "model"
    compression: Literal["none", "float16", "topk"] = Field(
        "none",
        description="duals on the wire: none (float32), float16 (half the bytes) or topk (the "
        "topk_fraction entries that changed most, as values + indices: 8 bytes each)",
    )
    topk_fraction: float = Field(
        0.25,
        gt=0,
        le=1,
        description="compression topk: share of entries sent (0.25 = half the "
        "bytes, 0.125 = a quarter)",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "site_weighting" in data:
            raise ValueError(
                "site_weighting moved to training.site_weighting (it now applies to every method)"
            )
        return data


class FedProxConfig(Section):
    mu_prox: float = Field(0.01, ge=0)


class TopologyConfig(Section):
    kind: Literal["ring", "multiplex_ring", "complete", "random", "edges"] = "multiplex_ring"
    edges: list[tuple[str, str]] | None = Field(None, description="explicit edge list (kind=edges)")
    random_degree: float = Field(3.0, gt=0, description="mean degree of the seeded random graph")


class NetworkConfig(Section):
    """The simulated network (and the timing rules a deployment shares)."""

    exchange_every: int = Field(8, ge=1, description="K: local steps per exchange on an edge")
    site_speed: dict[str, float] = Field(
        default_factory=dict, description="relative compute speed per site (default 1.0)"
    )
    latency_steps: tuple[float, float] = Field((0.5, 3.0), description="link latency range")
    drop_prob: float = Field(0.0, ge=0, lt=1)
    staleness_bound: int = Field(64, ge=1, description="drop messages older than S steps")
    inactive_after: int = Field(200, ge=1, description="edge inactive after D silent steps")
    stagger_exchanges: bool = Field(
        True,
        description="each edge exchanges at its own seeded offset; false = all edges on the "
        "same steps (synchronous rounds)",
    )
    linger: bool = Field(
        True,
        description="after its last step an ECL site keeps exchanging duals (model unchanged) "
        "until every site has finished, so stragglers do not end alone",
    )
    compute_jitter: float = Field(
        0.1, ge=0, lt=1, description="simulation: compute time per step varies by +- this fraction"
    )
    max_nonfinite_steps: int = Field(
        10, ge=1, description="a site stops after this many non-finite steps in a row"
    )


class DeployConfig(Section):
    """One hospital per process (``hospitalnet site run``, ``simulate --processes``): real time.

    The simulation's step-based rules (``network.*``) carry over where they are counted in steps
    (K, the staleness bound S, the non-finite limit); what a real network measures in seconds is
    set here.
    """

    # D should be a few exchange periods (K steps), no more: until a dead neighbour goes
    # inactive, ECL keeps pulling towards its last, frozen dual. Measured on the default world
    # (n8 or n3 killed at step 250 of 500, about 40 ms a step): D = 10 s (the rest of the run)
    # cost the seven others 0.022-0.036 mean AUROC; D = 3 s or 1 s cost 0.000-0.008.
    inactive_after_s: float = Field(
        3.0,
        gt=0,
        description="D in seconds: an edge with no message for longer goes inactive (a few "
        "exchange periods; raise it for slow steps, e.g. large models)",
    )
    inactive_cap_s: float = Field(
        30.0,
        gt=0,
        description="cap of the per-edge D learned from the gaps between messages (mean + 4 "
        "deviations, as TCP's RTO; hospitalnet.deadline), whose floor is inactive_after_s",
    )
    heartbeat_interval_s: float = Field(1.0, gt=0, description="heartbeat an idle edge this often")
    call_timeout_s: float = Field(10.0, gt=0, description="deadline of one message delivery")
    startup_wait_s: float = Field(
        30.0, ge=0, description="before step 1, wait at most this long for every neighbour"
    )
    linger_max_s: float = Field(
        60.0,
        ge=0,
        description="after its last step a site keeps exchanging until its neighbours are done "
        "or inactive, at most this long",
    )
    linger_grace_s: float = Field(
        2.0, ge=0, description="and at least this long, so that neighbours hear its last duals"
    )
    checkpoint_every: int = Field(
        50, ge=0, description="checkpoint every this many local steps (0 = only at the end/SIGTERM)"
    )
    checkpoints_kept: int = Field(3, ge=1, description="newest checkpoints kept on disk")
    step_interval_s: float = Field(
        0.0,
        ge=0,
        description="minimum seconds per local step (0 = as fast as the site computes; tests "
        "slow sites down so that faults land mid-training)",
    )
    max_wall_s: float = Field(
        3600.0, gt=0, description="a site stops (checkpoint, outputs, exit) after this long"
    )


class ExperimentConfig(Section):
    seed: int = 0
    methods: list[str] = Field(
        default_factory=lambda: ["ecl", "gossip", "fedavg", "local", "pooled"]
    )
    world: WorldConfig = WorldConfig()
    partition: PartitionConfig = PartitionConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    ecl: ECLConfig = ECLConfig()
    fedprox: FedProxConfig = FedProxConfig()
    topology: TopologyConfig = TopologyConfig()
    network: NetworkConfig = NetworkConfig()
    deploy: DeployConfig = DeployConfig()


def format_validation_error(source: str, err: ValidationError) -> str:
    """One line per problem: ``source: dotted.key: message``."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{source}: {key}: {msg}")
    return "; ".join(lines)


def validate(cls: type[M], data: Any, *, source: str) -> M:
    try:
        return cls.model_validate(data if data is not None else {})
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err)) from None


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (invalid UTF-8); expected YAML") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(err, 'problem', err)})") from None


def load_config(path: str | Path | None, cls: type[M] = ExperimentConfig) -> M:  # type: ignore[assignment]
    """Load ``path`` over the documented defaults (``None`` = defaults only)."""
    if path is None:
        return cls()
    return validate(cls, read_yaml(path), source=str(path))


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML (written into every run directory)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
