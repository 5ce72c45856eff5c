"""The simulator's typed config (YAML). Every model forbids unknown fields; a bad value stops the run naming the field.

Beyond field types, `SimConfig` checks what only the whole config can tell: every GPU type is known to the emulator's
calibration (`agents.emulator.profiles`), a MIG slice holds the model, the fleet shares add up, the mix has weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agents.emulator.profiles import GpuProfile, get_profile


class SimConfigError(ValueError):
    """The config is wrong; the message names each offending field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# -- distributions -----------------------------------------------------------------------------------------------
class LogNormal(_Model):
    kind: Literal["lognormal"] = "lognormal"
    mu: float
    sigma: float = Field(ge=0)


class Constant(_Model):
    kind: Literal["constant"] = "constant"
    value: float = Field(gt=0)


class Exponential(_Model):
    """Geometric over whole tokens with this mean (the discrete exponential)."""

    kind: Literal["exponential"] = "exponential"
    mean: float = Field(gt=0)


class Uniform(_Model):
    kind: Literal["uniform"] = "uniform"
    min: float = Field(ge=0)
    max: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


Dist = Annotated[LogNormal | Constant | Exponential | Uniform, Field(discriminator="kind")]


# -- workload ----------------------------------------------------------------------------------------------------
class Poisson(_Model):
    kind: Literal["poisson"] = "poisson"
    rate_rps: float = Field(gt=0)


class Mmpp(_Model):
    """Markov-modulated Poisson: state i lasts Exp(dwell_s[i]) at rates_rps[i], then moves to another state."""

    kind: Literal["mmpp"] = "mmpp"
    rates_rps: list[Annotated[float, Field(ge=0)]] = Field(min_length=2)
    dwell_s: list[Annotated[float, Field(gt=0)]] = Field(min_length=2)

    @model_validator(mode="after")
    def _same_length(self) -> Mmpp:
        if len(self.rates_rps) != len(self.dwell_s):
            raise ValueError("rates_rps and dwell_s need one entry per state")
        if max(self.rates_rps) <= 0:
            raise ValueError("rates_rps: at least one state needs a positive rate")
        return self


class Diurnal(_Model):
    """rate(t) = mean x (1 + amplitude x sin(2 pi (t / period + phase))), by thinning."""

    kind: Literal["diurnal"] = "diurnal"
    mean_rps: float = Field(gt=0)
    amplitude: float = Field(default=0.5, ge=0, le=1)
    period_s: float = Field(default=86_400, gt=0)
    phase: float = 0.0


class Trace(_Model):
    """Replay a CSV trace: a timestamp column plus prompt/output token columns (the Azure LLM trace layout)."""

    kind: Literal["trace"] = "trace"
    path: str
    time_scale: float = Field(default=1.0, gt=0)  # 0.5 replays twice as fast
    loop: bool = True  # start again when the trace is shorter than the run


Arrival = Annotated[Poisson | Mmpp | Diurnal | Trace, Field(discriminator="kind")]


class Mix(_Model):
    llm: float = Field(default=1.0, ge=0)
    vision: float = Field(default=0.0, ge=0)
    asr: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _some(self) -> Mix:
        if self.llm + self.vision + self.asr <= 0:
            raise ValueError("the request mix has no weight")
        return self


class LlmShape(_Model):
    prompt_tokens: Dist = Field(default_factory=lambda: LogNormal(mu=3.8, sigma=0.6))
    output_tokens: Dist = Field(default_factory=lambda: LogNormal(mu=4.6, sigma=0.7))


class VisionShape(_Model):
    """An image becomes prompt tokens at one token per 28x28 patch (a ViT-style encoder's merged patches)."""

    pixels: Dist = Field(default_factory=lambda: Uniform(min=224 * 224, max=1024 * 1024))
    output_tokens: Dist = Field(default_factory=lambda: LogNormal(mu=4.0, sigma=0.5))


class AsrShape(_Model):
    """Audio becomes 25 prompt tokens a second (Whisper's encoder frame rate, halved) and 3 output tokens a second."""

    audio_s: Dist = Field(default_factory=lambda: Uniform(min=1, max=30))


class Tenants(_Model):
    count: int = Field(default=1, ge=1)
    zipf_s: float = Field(default=0.0, ge=0)  # 0 = equal shares


class Workload(_Model):
    arrival: Arrival
    model: str = "llama-3-8b"
    mix: Mix = Field(default_factory=Mix)
    llm: LlmShape = Field(default_factory=LlmShape)
    vision: VisionShape = Field(default_factory=VisionShape)
    asr: AsrShape = Field(default_factory=AsrShape)
    tenants: Tenants = Field(default_factory=Tenants)
    max_prompt_tokens: int = Field(default=8192, ge=1)
    max_output_tokens: int = Field(default=4096, ge=1)


# -- fleet -------------------------------------------------------------------------------------------------------
class GpuShare(_Model):
    type: str  # an emulator profile: h100, a100, l40s, h200, mi300x
    mig: str = ""  # a MIG slice of an a100/h100, e.g. 3g.40gb; the whole GPU when empty
    share: float = Field(gt=0)  # fraction of every cell's nodes
    max_num_seqs: int | None = Field(default=None, ge=1)  # batch slots; the topology default when unset

    def profile_name(self) -> str:
        return f"{self.type}-mig-{self.mig}" if self.mig else self.type


class Topology(_Model):
    regions: int = Field(default=1, ge=1)
    cells: int = Field(ge=1)
    nodes_per_cell: int = Field(ge=1)
    gpus: list[GpuShare] = Field(min_length=1)
    max_num_seqs: int = Field(default=16, ge=1)
    prices_per_hour: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)  # by GPU type

    @model_validator(mode="after")
    def _fleet(self) -> Topology:
        total = sum(g.share for g in self.gpus)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"gpus: the shares add up to {total:g}, not 1")
        if self.regions > self.cells:
            raise ValueError(f"regions ({self.regions}) exceed cells ({self.cells}): a region needs a cell")
        return self

    @property
    def nodes(self) -> int:
        return self.cells * self.nodes_per_cell


class RttDist(_Model):
    mean_ms: float = Field(default=0.5, ge=0)
    std_ms: float = Field(default=0.1, ge=0)


class Network(_Model):
    """Cells sit near their region's centre on a plane; RTT = distance + base, and a Vivaldi estimate of it is what
    the strategies see."""

    intra_cell_rtt: RttDist = Field(default_factory=RttDist)
    inter_cell_base_rtt_ms: float = Field(default=2.0, ge=0)  # between two cells of one region
    region_spread_ms: float = Field(default=25.0, ge=0)  # typical RTT between region centres
    # how far a cell sits from its region's centre (Gaussian, this / 2 per axis); None: inter_cell_base_rtt_ms. 0 puts
    # every cell on its centre: with one region per cell, every pair of cells is base + centre distance apart
    cell_spread_ms: float | None = Field(default=None, ge=0)
    noise: float = Field(default=0.1, ge=0, lt=1)  # per-pair deviation from the embeddable geometry
    vivaldi_rounds: int = Field(default=40, ge=0)  # 0: strategies see the true RTT


class Window(_Model):
    min: float = Field(ge=0)
    max: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


class Signals(_Model):
    """How stale routers' state is: each node publishes at most once per period (drawn per node from publish_ms),
    and a publication reaches a router after a transport delay (gossip hops between cells)."""

    publish_ms: Window = Field(default_factory=lambda: Window(min=50, max=100))
    intra_cell_ms: Window = Field(default_factory=lambda: Window(min=5, max=25))
    inter_cell_ms: Window = Field(default_factory=lambda: Window(min=50, max=200))
    failure_detect_ms: float = Field(default=1000.0, ge=0)  # until a dead node is marked unroutable
    ewma_alpha: float = Field(default=0.2, gt=0, le=1)
    # whether a runtime's state says its batch slots (max_concurrency); vLLM's metrics do not, and then the strategy
    # sees none and the router learns them from a runtime seen queueing while it runs that many (router.view)
    report_max_concurrency: bool = True


class Hedging(_Model):
    """The router's hedge rule (router.core.hedging): after the q-quantile of recent TTFT, send to the next target."""

    enabled: bool = False
    quantile: float = Field(default=0.9, gt=0, lt=1)
    multiplier: float = Field(default=1.0, gt=0)
    min_delay_ms: float = Field(default=5.0, ge=0)
    max_delay_ms: float = Field(default=2000.0, gt=0)
    default_delay_ms: float = Field(default=200.0, gt=0)
    budget_ratio: float = Field(default=0.1, ge=0, le=1)  # hedges per request, at most
    budget_burst: float = Field(default=10.0, ge=1)
    predicted_factor: float = Field(default=1.5, gt=0)  # hedge when the strategy's predicted TTFT is overrun so
    min_win_rate: float = Field(default=0.1, ge=0, le=1)  # stop hedging from a GPU type whose hedges never win


class Routing(_Model):
    strategies: list[str] = Field(min_length=1)  # built-in names or "package.module:Class"
    view: Literal["auto", "full", "cell"] = "auto"
    remote_sample: int = Field(default=256, ge=0)  # other cells' targets a router tracks in the "cell" view
    full_view_limit: int = Field(default=20_000, ge=1)  # "auto": full view while routers x targets stay below
    refresh_ms: float = Field(default=200.0, gt=0)
    k: int = Field(default=2, ge=1)
    retries: int = Field(default=2, ge=0)
    decision_us: float = Field(default=0.0, ge=0)  # routing time added to every request
    # the router's hold-at-router queue (router.config RoutingPolicy.hold_when_full, on by default there): while
    # every batch slot is taken by the router's own requests, new ones wait at the router, FIFO, and each goes to
    # the best-ranked target with a free slot when one frees
    hold_when_full: bool = True
    hedging: Hedging = Field(default_factory=Hedging)


class Fault(_Model):
    """A scheduled fault: `fail` stops nodes (requests on them are lost and retried), `throttle` slows them."""

    kind: Literal["fail", "throttle"]
    at_s: float = Field(ge=0)
    duration_s: float = Field(gt=0)
    fraction: float = Field(default=0.0, ge=0, le=1)  # of the matching nodes
    count: int = Field(default=0, ge=0)  # or a fixed number of them
    cell: int | None = Field(default=None, ge=0)  # only this cell
    gpu: str = ""  # only this GPU type
    factor: float = Field(default=0.5, gt=0, le=1)  # throttle: share of full speed left

    @model_validator(mode="after")
    def _some(self) -> Fault:
        if not self.fraction and not self.count:
            raise ValueError("a fault needs a fraction or a count of nodes")
        return self


class Output(_Model):
    bin_s: float = Field(default=10.0, gt=0)  # width of the utilization-over-time bins
    plots: bool = True
    max_request_rows: int = Field(default=200_000, ge=0)  # rows of requests.csv per strategy (a uniform sample)


class SimConfig(_Model):
    name: str = "sim"
    seed: int = 42
    duration_s: float = Field(gt=0)
    drain_s: float = Field(default=60.0, ge=0)  # run past the last arrival so requests in flight finish
    topology: Topology
    network: Network = Field(default_factory=Network)
    workload: Workload
    signals: Signals = Field(default_factory=Signals)
    routing: Routing
    faults: list[Fault] = Field(default_factory=list)
    output: Output = Field(default_factory=Output)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or "/" in v:
            raise ValueError("name must be non-empty and hold no '/'")
        return v

    @model_validator(mode="after")
    def _whole(self) -> SimConfig:
        problems: list[str] = []
        for i, g in enumerate(self.topology.gpus):
            try:
                profile = resolve_profile(g)
            except ValueError as exc:
                problems.append(f"topology.gpus.{i}.type: {exc}")
                continue
            longest = self.workload.max_prompt_tokens + self.workload.max_output_tokens
            if profile.kv_tokens < longest:
                problems.append(
                    f"topology.gpus.{i}: {profile.name} holds {profile.kv_tokens} KV tokens, fewer than the longest "
                    f"request ({longest} = max_prompt_tokens + max_output_tokens)"
                )
        gpu_types = {g.type for g in self.topology.gpus}
        for t in self.topology.prices_per_hour:
            if t not in gpu_types:
                problems.append(f"topology.prices_per_hour.{t}: no such GPU type in topology.gpus")
        for i, f in enumerate(self.faults):
            if f.cell is not None and f.cell >= self.topology.cells:
                problems.append(f"faults.{i}.cell: cell {f.cell} does not exist ({self.topology.cells} cells)")
            if f.gpu and f.gpu not in gpu_types:
                problems.append(f"faults.{i}.gpu: no such GPU type in topology.gpus")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def end_s(self) -> float:
        return self.duration_s + self.drain_s


def resolve_profile(g: GpuShare) -> GpuProfile:
    """The emulator's calibrated profile of a fleet entry (raises ValueError for an unknown type or slice)."""
    return get_profile(g.profile_name())


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        lines.append(f"{loc or 'config'}: {err['msg']}")
    return "; ".join(lines)


def parse_config(data: Any) -> SimConfig:
    """Validate a mapping; raise `SimConfigError` naming every offending field."""
    if not isinstance(data, dict):
        raise SimConfigError("config: expected a mapping at the top level")
    try:
        return SimConfig.model_validate(data)
    except ValidationError as exc:
        raise SimConfigError(_format_errors(exc)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SimConfig:
    """Read a YAML config; `overrides` are dotted keys (e.g. {"duration_s": 30}) applied before validation."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise SimConfigError(f"{p}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SimConfigError(f"{p}: not YAML: {exc}") from None
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    base = p.parent
    cfg = parse_config(data)
    arrival = cfg.workload.arrival
    if isinstance(arrival, Trace) and not Path(arrival.path).is_absolute():
        arrival.path = str((base / arrival.path).resolve())  # relative to the config file
    return cfg


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
