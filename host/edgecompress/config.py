"""User-facing configuration: device profiles (TOML), validated with clear errors."""

from __future__ import annotations

import re
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgecompress.errors import ConfigError

if TYPE_CHECKING:
    from edgecompress.budgets import Budget

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

USER_PROFILE_DIR = Path("~/.config/edgecompress/profiles").expanduser()
_AD_HOC = re.compile(r"^(?:(?P<user>[^@\s/]+)@)?(?P<host>[A-Za-z0-9.\-_]+|\[[0-9a-fA-F:]+\])(?::(?P<port>\d+))?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SshSettings(_Strict):
    """Where the device is: a host name or an alias from ~/.ssh/config (whose HostName, User, Port, IdentityFile,
    ProxyCommand and ProxyJump apply unless set here). Authentication is by key or ssh-agent, never by password."""

    host: str
    user: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    identity_file: str | None = None
    allow_agent: bool = True
    connect_timeout_s: float = Field(default=15.0, gt=0)
    keepalive_s: float = Field(default=15.0, ge=0)
    config_file: str | None = None  # default ~/.ssh/config
    known_hosts: str | None = None  # default: UserKnownHostsFile from the ssh config, else ~/.ssh/known_hosts
    accept_new_host: bool = False  # like OpenSSH StrictHostKeyChecking=accept-new; a changed key is always refused

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("password", "passphrase"):
                if key in data:
                    raise ValueError(f"{key} is not accepted in a profile: use a key file or ssh-agent (ssh-add)")
        return data


class RuntimeSettings(_Strict):
    name: Literal["onnxruntime", "tflite"] = "onnxruntime"
    threads: int | None = Field(default=None, ge=1)
    providers: list[str] = Field(default_factory=list)
    affinity: list[int] = Field(default_factory=list)
    min_version: str | None = None


class MeasureSettings(_Strict):
    warmup_runs: int = Field(default=10, ge=0)
    warmup_seconds: float = Field(default=0.5, ge=0)
    runs: int = Field(default=100, ge=1)
    min_seconds: float = Field(default=1.0, ge=0)
    max_seconds: float = Field(default=60.0, gt=0)


class PowerSettings(_Strict):
    """Power source: auto, none, command (``command`` prints W or J), ina3221, ina3221x, pi5-pmic, rapl."""

    source: str = "auto"
    command: str | None = None
    interval_s: float = Field(default=0.01, ge=0.001, le=10)
    idle_seconds: float = Field(default=0.5, ge=0, le=60)


class ThermalSettings(_Strict):
    start_temp_c: float | None = None
    max_wait_s: float = Field(default=120.0, ge=0)
    repeat_if_throttled: bool = True


class PoolSettings(_Strict):
    """A pool profile's ``[pool]`` table: devices of one kind that measure a tune run's candidates side by side."""

    members: list[str] = Field(min_length=1)  # profile names, .toml files or user@host[:port]
    # Each member measures the original before the search; one whose figure differs from the members' median by
    # more than this fraction on a device budget is reported and left out (unless keep_outliers).
    tolerance: float = Field(default=0.15, gt=0)
    keep_outliers: bool = False


class DeviceProfile(_Strict):
    """Everything edgecompress needs to know to measure on one device."""

    name: str
    description: str = ""
    transport: Literal["local", "ssh"] = "local"
    python: str | None = None
    cache_dir: str | None = None
    ssh: SshSettings | None = None
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    measure: MeasureSettings = Field(default_factory=MeasureSettings)
    power: PowerSettings = Field(default_factory=PowerSettings)
    thermal: ThermalSettings = Field(default_factory=ThermalSettings)
    facts: dict[str, str] = Field(default_factory=dict)
    sysfs_root: str | None = None  # local agent only: a fixture tree read instead of /sys and /proc
    pool: PoolSettings | None = None  # a pool profile: its members are the devices, it measures nothing itself


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "profile"
    return f"{where}: {first['msg']}"


def read_config_text(path: Path) -> str:
    """The text of a configuration file (a profile, edgecompress.toml); a ConfigError names the file and the fix."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8, as TOML requires"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc


def parse_profile(text: str, origin: str) -> DeviceProfile:
    """A profile from TOML text; ``origin`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from exc
    data.setdefault("name", Path(origin).stem)
    try:
        profile = DeviceProfile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {_describe(exc)}") from exc
    if profile.transport == "ssh" and profile.ssh is None:
        raise ConfigError(f"{origin}: transport = 'ssh' needs an [ssh] table with a host")
    return profile


def builtin_profiles() -> dict[str, DeviceProfile]:
    found = {}
    for entry in resources.files("edgecompress.profiles").iterdir():
        if entry.name.endswith(".toml"):
            profile = parse_profile(entry.read_text(encoding="utf-8"), f"built-in profile {entry.name}")
            found[profile.name] = profile
    return found


def profile_catalog(user_dir: Path | None = None) -> tuple[dict[str, DeviceProfile], dict[str, ConfigError]]:
    """Built-in profiles overridden by same-named ones in the user's config folder, and the user's profiles that
    do not load (by the name they give, else their file's stem) with the error that says why.

    A broken profile is an error only when it is the device asked for: one bad file must not stop every device.
    """
    profiles = builtin_profiles()
    broken: dict[str, ConfigError] = {}
    folder = user_dir or USER_PROFILE_DIR
    if folder.is_dir():
        for path in sorted(folder.glob("*.toml")):
            try:
                profile = parse_profile(read_config_text(path), str(path))
            except ConfigError as exc:
                broken[_intended_name(path)] = exc
                continue
            profiles[profile.name] = profile
    for name in broken:
        profiles.pop(name, None)  # a broken override of a built-in is not silently the built-in
    return profiles, broken


def _intended_name(path: Path) -> str:
    """The name a profile file gives itself, read as far as it can be, else the file's stem."""
    try:
        name = tomllib.loads(path.read_text(encoding="utf-8")).get("name")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return path.stem
    return name if isinstance(name, str) and name else path.stem


def resolve_device(spec: str, user_dir: Path | None = None, pool_ok: bool = False) -> DeviceProfile:
    """A profile from a name, a TOML file path, an ad-hoc ``user@host[:port]``, or a Host alias of ~/.ssh/config.
    A pool profile only where ``pool_ok`` (tune); the commands that measure on one device are told its members."""
    profile = _resolve_device(spec, user_dir)
    if profile.pool is not None and not pool_ok:
        members = ", ".join(profile.pool.members)
        raise ConfigError(f"device {spec} is a pool; this command measures on one device: give one of {members}")
    return profile


def _resolve_device(spec: str, user_dir: Path | None) -> DeviceProfile:
    if spec.endswith(".toml"):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"device profile {spec} does not exist")
        return parse_profile(read_config_text(path), spec)
    profiles, broken = profile_catalog(user_dir)
    if spec in broken:
        raise broken[spec]
    if spec in profiles:
        return profiles[spec]
    match = _AD_HOC.match(spec)
    if match and ("@" in spec or ":" in spec or "." in spec):
        port = int(match["port"]) if match["port"] else None
        ssh = SshSettings(host=match["host"].strip("[]"), user=match["user"], port=port)
        return DeviceProfile(name=spec, description="ad-hoc SSH device", transport="ssh", ssh=ssh)
    # Imported here: the SSH module imports this one, and paramiko is only loaded for a name that is no profile.
    from edgecompress.device._ssh import DEFAULT_CONFIG, ssh_config_hosts

    aliases = ssh_config_hosts()
    if spec in aliases:
        # HostName, User, Port, IdentityFile, ProxyJump... come from the ssh config when the transport connects.
        ssh = SshSettings(host=spec)
        return DeviceProfile(name=spec, description=f"Host {spec} of {DEFAULT_CONFIG}", transport="ssh", ssh=ssh)
    known = ", ".join(sorted(profiles))
    hosts = f"; Host aliases in {DEFAULT_CONFIG}: {', '.join(aliases)}" if aliases else ""
    raise ConfigError(
        f"unknown device {spec!r}; known profiles: {known}{hosts} (or give user@host[:port] or a .toml file)"
    )


def resolve_pool(
    specs: list[str], user_dir: Path | None = None
) -> tuple[list[tuple[str, DeviceProfile]], PoolSettings]:
    """The members of ``--device`` given once or more (a pool profile stands for its members) as (spec, profile),
    named uniquely (a device named twice gets #2, #3...; local agents of one name each get a cache folder of their
    own), and the pool's settings (a pool profile's, else the defaults)."""
    members: list[tuple[str, DeviceProfile]] = []
    settings = PoolSettings(members=list(specs))
    for spec in specs:
        profile = resolve_device(spec, user_dir, pool_ok=True)
        if profile.pool is None:
            members.append((spec, profile))
            continue
        settings = profile.pool
        base = Path(spec).parent if spec.endswith(".toml") else None
        for member in profile.pool.members:
            if base is not None and member.endswith(".toml") and not Path(member).is_absolute():
                member = str(base / member)
            found = resolve_device(member, user_dir, pool_ok=True)
            if found.pool is not None:
                raise ConfigError(f"pool {profile.name}: member {member} is a pool itself")
            members.append((member, found))
    named: list[tuple[str, DeviceProfile]] = []
    seen: dict[str, int] = {}
    for spec, profile in members:
        seen[profile.name] = seen.get(profile.name, 0) + 1
        if seen[profile.name] == 1:
            named.append((spec, profile))
            continue
        name = f"{profile.name}#{seen[profile.name]}"
        update: dict[str, Any] = {"name": name}
        if profile.transport == "local":
            cache = Path(profile.cache_dir or _agent_cache_dir())
            update["cache_dir"] = str(cache.parent / f"{cache.name}-{name.replace('#', '-')}")
        named.append((spec, profile.model_copy(update=update)))
    return named, settings


def _agent_cache_dir() -> str:
    from edgecompress_agent.server import default_cache_dir  # the agent's own default, as it would pick it

    return str(default_cache_dir())


class TuneConfig(_Strict):
    """Everything ``edgecompress tune`` needs; from an ``edgecompress.toml`` ``[tune]`` table and flags."""

    example: str | None = None
    model: str | None = None
    data: str | None = None
    data_dir: str | None = None
    arch: str | None = None
    # One device, or several of one kind measuring side by side (--device repeated, or a pool profile).
    device: str | list[str] = "local"
    budgets: list[str] = Field(default_factory=list)
    name: str | None = None
    rounds: int = Field(default=3, ge=1, le=50)
    trials_per_round: int = Field(default=12, ge=1, le=10000)
    schedule: Literal["exponential", "linear", "one-step"] = "exponential"
    alpha: float = Field(default=0.5, gt=0)
    sampler: Literal["tpe", "gp", "random"] = "tpe"
    strategy: Literal["cooled", "unconstrained", "uniform"] = "cooled"
    tradeoff_lambda: float = Field(default=1.0, ge=0)
    seed: int = 0
    max_ratio: float = Field(default=0.8, gt=0, lt=1)
    ratio_step: float = Field(default=0.05, gt=0, lt=1)
    quant: list[Literal["fp32", "fp16", "int8"]] = Field(default_factory=lambda: ["fp32", "int8"])  # type: ignore[arg-type]
    # Measure the original once in each reduced-precision format; one slower than fp32 on every device budget is
    # left out of the search unless a size budget rewards it (int8 QDQ on a CPU without VNNI is 1.5-2.5x slower).
    quant_probe: bool = True
    coarsen: Literal["auto", "yes", "no"] = "auto"
    # Channel counts kept to multiples of 8: onnxruntime's CPU kernels block channels by 8 (16 with AVX-512), and
    # an odd count is slower than the unpruned layer (measured: docs/benchmarks.md). 1 disables the alignment.
    round_to: int = Field(default=8, ge=1)
    finetune_steps: int = Field(default=200, ge=0)
    candidate_finetune_steps: int = Field(default=0, ge=0)
    finetune_lr: float = Field(default=1e-3, gt=0)
    val_limit: int | None = Field(default=2000, ge=1)
    opset: int | None = Field(default=None, ge=13, le=21)
    runs: int | None = Field(default=None, ge=1)
    min_seconds: float | None = Field(default=None, ge=0)
    warmup_seconds: float | None = Field(default=None, ge=0)
    # Inputs per call on the device (ONNX models have a dynamic batch axis); latency and energy are per call.
    batch: int = Field(default=1, ge=1, le=4096)
    drift_tolerance: float = Field(default=0.10, gt=0)
    drift_wait_s: float = Field(default=30.0, ge=0)
    storage: str | None = None
    accept_new_host: bool = False
    max_device_failures: int = Field(default=3, ge=1)
    # How long a device that stopped answering is waited for before the run stops (a Pi or a Jetson reboots in
    # 30-90 s); the trial it was measuring is then measured again, not lost.
    device_wait_s: float = Field(default=300.0, ge=0)
    # Verdicts: a budget is met when the one-sided bound at this confidence is under it, from at least min_windows
    # and at most max_windows measurement windows (more only while undecided); the final answer may take
    # confirm_windows (docs/verdicts.md).
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    min_windows: int = Field(default=2, ge=1, le=100)
    max_windows: int = Field(default=6, ge=1, le=100)
    confirm_windows: int = Field(default=10, ge=1, le=200)
    # Where fine-tuning, distillation and BatchNorm recalibration run: auto = CUDA when torch sees a GPU.
    host_device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # The final model's outputs on the device against the host's on the same inputs (edgecompress validate): a model
    # whose device outputs disagree beyond min_agreement is not the answer.
    validate_final: bool = True
    validate_samples: int = Field(default=500, ge=1)
    min_agreement: float = Field(default=0.99, ge=0, le=1)
    # The next round's base: the most accurate feasible trial by the search's score, or the best of the top 3 after
    # base_probe_steps distillation steps each (docs/benchmarks.md, "Accuracy proxy": which one wins, measured).
    base_choice: Literal["score", "short-finetune"] = "score"
    base_probe_steps: int = Field(default=50, ge=1)
    # Device time only where it can change the answer: a candidate that cannot beat the round's best, or that the
    # run's latency model predicts infeasible, is not measured (docs/tune.md, "Latency model screening").
    screen: bool = True
    # Build and score the next candidate on the host while the device measures: auto = yes for remote devices, and
    # for a local one only when the host and the agent can be pinned to cores of their own.
    overlap: Literal["auto", "yes", "no"] = "auto"
    # A run shared with other hosts (--storage postgresql://...): where candidates' bases and the original travel
    # (Optuna's artifact store: a folder every host sees, or s3://bucket/prefix). Default: artifacts/ in the run.
    artifacts: str | None = None

    @property
    def devices(self) -> list[str]:
        return [self.device] if isinstance(self.device, str) else list(self.device)

    @property
    def shared(self) -> bool:
        """Whether other hosts may join (a storage given, not the run folder's own SQLite file)."""
        return self.storage is not None


def load_tune_config(path: Path | None, overrides: dict) -> TuneConfig:
    """A TuneConfig from an optional TOML file (``[tune]`` and ``[budgets]``) with flag overrides on top.

    A ``--budget`` flag replaces the file's budget on the same metric; the file's other budgets stay.
    """
    # Imported here: the gate imports the device package, which imports this module.
    from edgecompress.budgets import parse_budgets
    from edgecompress.gate import budget_texts, merge_budgets

    values: dict = {}
    configured: list[Budget] = []
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = tomllib.loads(read_config_text(path))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        values.update(data.get("tune", {}))
        try:
            texts = budget_texts(data["budgets"], "budgets") if "budgets" in data else []
            configured = parse_budgets(texts + budget_texts(values.get("budgets", []), "tune.budgets"))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    flags = parse_budgets(overrides.get("budgets") or [])
    values["budgets"] = [budget.text for budget in merge_budgets(configured, flags)]
    for key, value in overrides.items():
        if value is None or key == "budgets":
            continue
        values[key] = value
    try:
        return TuneConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"{path or 'tune'}: {_describe(exc)}") from exc


def check_tune_config(config: TuneConfig) -> tuple[list[Budget], list[tuple[str, DeviceProfile]], PoolSettings]:
    """The budgets, the devices (spec and profile) and the pool's settings of a tune configuration, after the checks
    that need neither torch nor a device (the workload's source included); ConfigError or WorkloadError on the first
    mistake, so the CLI answers one before it imports the search."""
    from edgecompress.budgets import parse_budgets
    from edgecompress.examples import check_workload_source

    budgets = parse_budgets(config.budgets)
    if not budgets:
        raise ConfigError("give at least one --budget (e.g. --budget 'latency.mean<=0.5x')")
    members, settings = resolve_pool(config.devices)
    check_workload_source(config.example, config.model, config.data, config.data_dir, config.arch)
    return budgets, members, settings


def check_out_folder(out: Path) -> None:
    """ConfigError if ``out`` holds anything: a run's folder is never written over."""
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {out} is not empty; use --resume {out} to continue it, or another --out")
