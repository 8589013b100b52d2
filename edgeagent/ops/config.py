"""The agent's one configuration schema, loaded from TOML and validated up front.

A box in the field is configured once and then runs unattended, so every
mistake must surface at ``edgeagent config validate`` (systemd's
ExecStartPre) rather than hours later inside a thread. Validation is pydantic
v2; every failure is re-raised as :class:`edgeagent.errors.ConfigError`
naming the dotted key, the offending value and how to fix it.

Secret fields (passwords, key passphrases) are ``SecretStr`` and marked
``secret`` in their schema so :func:`redacted` can blank them for ``config
show`` and support bundles without a hand-kept list.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from edgeagent.errors import ConfigError, ConfigErrors
from edgeagent.fl.constants import DEFENCE_RULES

#: ``[aggregator] robust``: FedAvg ("none") or one of ``fl.robust``'s defences.
ROBUST_CHOICES: tuple[str, ...] = ("none", *DEFENCE_RULES)

DEFAULT_PATH = Path("/etc/edgeagent/config.toml")
#: The example shipped inside the package (present in a pip install, unlike the repo's systemd/).
EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "data" / "edgeagent.example.toml"
REDACTED = "<redacted>"

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAC_RE = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")
_TOPIC_BAD = re.compile(r"[#+\x00]")


def _secret(description: str) -> Any:
    """A field holding a secret: redacted by ``show`` and in support bundles."""
    return Field(default=None, description=description, json_schema_extra={"secret": True})


def _keyed(key: str, problem: str) -> ValueError:
    """A cross-field error pinned to one key (``a.b`` relative to the validated table).

    pydantic reports model-level errors at the table; the marker lets
    :func:`_to_errors` name the exact key and value instead.
    """
    return ValueError(f"@{key}@{problem}")


def _check_id(value: str, what: str) -> str:
    """Ids end up in MQTT topics and file names: keep them to a safe alphabet."""
    if not _ID_RE.match(value):
        raise ValueError(
            f"{what} must be 1-64 characters of letters, digits, '_', '.', '-' "
            "starting with a letter or digit (it is used in MQTT topics and file names)"
        )
    return value


class _Section(BaseModel):
    """Base for every section: unknown keys are errors (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentSection(_Section):
    """Who this box is and where it keeps state."""

    box_id: str = Field(description="Unique id of this box; its MQTT identity and topic segment.")
    fleet: str = Field(default="default", description="Fleet name; first topic segment.")
    state_dir: Path = Field(
        default=Path("/var/lib/edgeagent"),
        description="Writable state (outbox, models, registry); systemd's StateDirectory.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("box_id", "fleet")
    @classmethod
    def _ids(cls, v: str) -> str:
        return _check_id(v, "the value")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        if not v.is_absolute():
            raise ValueError("state_dir must be an absolute path (the daemon's cwd is '/')")
        return v


class SerialDevice(_Section):
    """One wired device (smart textile, hub) on a serial port."""

    port: str = Field(description="Serial device path, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")
    device_id: str
    patient: str = Field(description="Patient the device is worn by; windows are per patient.")
    baudrate: int = Field(default=115200, gt=0, le=4_000_000)

    @field_validator("device_id", "patient")
    @classmethod
    def _ids(cls, v: str) -> str:
        return _check_id(v, "the value")

    @field_validator("port")
    @classmethod
    def _port(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("port must be an absolute device path such as /dev/ttyUSB0")
        return v


class BleDevice(_Section):
    """One wearable on BLE, bound to a patient by its address."""

    address: str = Field(description="BLE address AA:BB:CC:DD:EE:FF.")
    device_id: str
    patient: str

    @field_validator("address", mode="before")
    @classmethod
    def _mac(cls, v: object) -> object:
        if isinstance(v, str):
            v = v.upper()
            if not _MAC_RE.match(v):
                raise ValueError("address must look like AA:BB:CC:DD:EE:FF")
        return v

    @field_validator("device_id", "patient")
    @classmethod
    def _ids(cls, v: str) -> str:
        return _check_id(v, "the value")


class BleSection(_Section):
    """BLE discovery: which advertisements to consider and which addresses to trust."""

    enabled: bool = False
    adapter: str = "hci0"
    scan_timeout_s: float = Field(default=10.0, gt=0, le=300)
    name_prefixes: tuple[str, ...] = Field(
        default=(), description="Only advertisements whose local name starts with one of these."
    )
    service_uuids: tuple[str, ...] = Field(
        default=(), description="Only devices advertising these."
    )
    allow: tuple[str, ...] = Field(
        default=(),
        description="Address allow-list; empty = the addresses under [[devices.ble.device]].",
    )
    device: tuple[BleDevice, ...] = ()

    @field_validator("allow", mode="before")
    @classmethod
    def _macs(cls, v: object) -> object:
        if isinstance(v, list | tuple):
            out = []
            for a in v:
                if not isinstance(a, str) or not _MAC_RE.match(a.upper()):
                    raise ValueError(f"{a!r} is not a BLE address like AA:BB:CC:DD:EE:FF")
                out.append(a.upper())
            return tuple(out)
        return v


class DevicesSection(_Section):
    """Every device the box ingests from, and which patient wears it."""

    serial: tuple[SerialDevice, ...] = ()
    ble: BleSection = BleSection()

    @model_validator(mode="after")
    def _unique(self) -> DevicesSection:
        seen: set[str] = set()
        for d in (*self.serial, *self.ble.device):
            if d.device_id in seen:
                raise _keyed("device_id", f"{d.device_id!r} is used twice; ids must be unique")
            seen.add(d.device_id)
        ports = [d.port for d in self.serial]
        dup = {p for p in ports if ports.count(p) > 1}
        if dup:
            raise _keyed("serial", f"port(s) {sorted(dup)} listed twice; one device per port")
        return self


class WindowsSection(_Section):
    """Analysis windows: length and hop in seconds."""

    length_s: float = Field(default=10.0, gt=0, le=600)
    hop_s: float = Field(default=2.0, gt=0, le=600)

    @model_validator(mode="after")
    def _hop(self) -> WindowsSection:
        if self.hop_s > self.length_s:
            raise _keyed(
                "hop_s",
                f"must not exceed length_s ({self.length_s}), "
                "or data between windows would never be analysed",
            )
        return self


class DetectionSection(_Section):
    """On-box ONNX anomaly detection."""

    model_path: Path | None = Field(
        default=None, description="ONNX model; default: the registry's current model in state_dir."
    )
    threads: int = Field(
        default=1, ge=0, le=64, description="onnxruntime intra-op threads; 0 = size to the box."
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Overrides of the model's global decision thresholds: clinical and fault "
            "(class probability, 0..1), novelty (autoencoder error). Personal calibration "
            "may still raise a patient's clinical threshold above this floor."
        ),
    )
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)

    @field_validator("execution_providers")
    @classmethod
    def _providers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError('list at least one provider, e.g. ["CPUExecutionProvider"]')
        for p in v:
            if not p.endswith("ExecutionProvider"):
                raise ValueError(f"{p!r} is not an onnxruntime provider name (…ExecutionProvider)")
        return v

    @field_validator("thresholds")
    @classmethod
    def _range(cls, v: dict[str, float]) -> dict[str, float]:
        for k, x in v.items():
            if k in ("clinical", "fault"):
                if not 0.0 <= x <= 1.0:
                    raise ValueError(f"thresholds.{k} = {x} must be within [0, 1]")
            elif k == "novelty":
                if not x > 0.0:
                    raise ValueError(f"thresholds.novelty = {x} must be > 0")
            else:
                raise ValueError(f"thresholds.{k}: unknown; use clinical, fault or novelty")
        return v


class LearningSection(_Section):
    """Local incremental learning that feeds federated rounds."""

    enabled: bool = True
    learning_rate: float = Field(default=0.01, gt=0, le=1.0)
    batch_size: int = Field(default=32, ge=1, le=65536)
    min_samples: int = Field(
        default=100, ge=1, description="Windows needed before joining a round."
    )


class FeedbackSection(_Section):
    """Clinicians' verdicts on alerts, kept with the windows behind each alert, as labels.

    Every default says why it is what it is; docs/operations.md has the same.
    """

    enabled: bool = True
    # 32 windows at a 2 s hop is the first ~70 s of an episode: the onset a clinician
    # judges. A longer episode adds nothing new to the label, only bytes (~0.8 kB a window on disk).
    windows_per_alert: int = Field(
        default=32, ge=1, le=1024, description="Windows kept per alert (its first ones)."
    )
    # A ward reviews alerts within a shift; 3 days covers a weekend. After that the
    # windows (patient data) are deleted and a verdict on the alert is refused as expired.
    retention_s: float = Field(
        default=3 * 86400.0,
        gt=0,
        description="An alert may be acknowledged this long after it opened; then its "
        "windows are deleted.",
    )
    # A quarter of the labelled alerts never train: the validation of a candidate model
    # needs windows it has not seen, and 25 % keeps most labels for training.
    holdout_share: float = Field(
        default=0.25, ge=0.0, lt=1.0, description="Share of labelled alerts held back."
    )
    # A nurse acknowledges a few alerts per patient per hour; 20 an hour after a burst of
    # 10 is far above that and far below what a flood (a stuck script, a forged ward
    # system) needs to outweigh a patient's normal windows in the learner.
    rate_per_hour: float = Field(
        default=20.0, gt=0, description="Verdicts per patient per hour (token bucket rate)."
    )
    burst: int = Field(default=10, ge=1, description="Verdicts per patient in one burst.")
    # ~40 MB at 42 features (0.76 kB a window, bench/feedback_store.py): small next to
    # the outbox (256 MB) on a 16 GB card.
    max_windows: int = Field(
        default=50_000,
        ge=100,
        description="Windows kept in all; beyond it the oldest awaiting a verdict go first, "
        "then the oldest labels.",
    )
    # A ward system's clock may drift by minutes; a replay older than this is refused
    # whatever its nonce, so the box only remembers nonces for this long.
    max_skew_s: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        description="Feedback messages this far from the box's clock are refused (replay window).",
    )


class FederationSection(_Section):
    """MQTT broker, TLS identity and the privacy settings of federated rounds."""

    enabled: bool = False
    broker_host: str = "localhost"
    broker_port: int = Field(default=8883, ge=1, le=65535)
    tls: bool = True
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: SecretStr | None = _secret("Passphrase of key_file, if encrypted.")
    username: str | None = None
    password: SecretStr | None = _secret("Broker password (prefer mTLS).")
    topic_prefix: str = "edgeagent/v1"
    clip_norm: float = Field(default=1.0, gt=0, description="L2 clip of each update.")
    noise_multiplier: float = Field(default=1.0, ge=0, description="Gaussian noise / clip_norm.")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    # Downgrade protection (box side): an aggregator cannot talk a box out of masking or
    # into groups so small that a group sum is nearly one box's update.
    allow_plaintext: bool = Field(
        default=False,
        description="Answer plaintext rounds (update readable by the aggregator, no masking).",
    )
    min_group_size: int = Field(
        default=3, ge=2, le=1000, description="Refuse grouped secure rounds with smaller groups."
    )
    # Grinding bound: each round that ends without a result after this box revealed its
    # share of the round seed is one seed the aggregator saw and could throw away.
    max_reveal_aborts: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="Sit rounds out once this many aborted after this box revealed (per window).",
    )
    reveal_abort_window_s: float = Field(
        default=86_400.0, gt=0, description="Window of max_reveal_aborts, in seconds."
    )
    revoked_file: Path | None = Field(
        default=None,
        description="Deny-list of revoked box ids (`edgeagent pki revoke`): refused in rounds.",
    )
    signing_key_file: Path | None = Field(
        default=None,
        description=(
            "Ed25519 signing key (default: the .sign.key beside cert_file); point it at "
            "/run/credentials/<unit>/client.sign.key to hand it over as a systemd credential."
        ),
    )

    @field_validator("topic_prefix")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not v or v.startswith("/") or v.endswith("/") or _TOPIC_BAD.search(v):
            raise ValueError(
                "topic_prefix must be non-empty, without leading/trailing '/' and "
                "without the wildcards '+' or '#'"
            )
        return v

    @model_validator(mode="after")
    def _tls_files(self) -> FederationSection:
        if self.enabled and self.tls and self.ca_file is None:
            raise _keyed("ca_file", "federation with tls = true needs ca_file (the broker's CA)")
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise _keyed(missing, "set both cert_file and key_file (mTLS), or neither")
        return self


class AggregatorSection(_Section):
    """Round policy of ``edgeagent aggregator run`` (ignored by boxes)."""

    min_boxes: int = Field(default=3, ge=2, description="Online boxes needed to start a round.")
    max_boxes: int = Field(default=100, ge=2, le=10_000, description="Boxes invited per round.")
    min_survivors: int = Field(default=2, ge=2, description="Fewer masked inputs abort the round.")
    stage_timeout_s: float = Field(default=30.0, gt=0, le=3600, description="Deadline per stage.")
    # Hourly rounds keep a box's uplink under 1 % of its raw sensor bytes (bench/bandwidth.py);
    # a pilot that wants fast convergence sets a shorter interval.
    round_interval_s: float = Field(default=3600.0, ge=0, le=86400, description="Pause between.")
    rounds: int = Field(default=0, ge=0, description="Stop after this many rounds; 0 = never.")
    n_cap: int = Field(default=1000, ge=1, description="Cap on a box's sample count n_k.")
    noise: Literal["distributed", "central"] = "distributed"
    dp_delta: float = Field(default=1e-5, gt=0, lt=1)
    server_lr: float = Field(default=1.0, gt=0, le=10)
    initial_model: Path | None = Field(default=None, description="ONNX global model of round 0.")
    holdout: Path | None = Field(default=None, description="Held-out .npz (x, mu, sigma, y).")
    eval_tolerance: float = Field(default=0.10, ge=0, description="Relative loss increase allowed.")
    robust: str = Field(
        default="none",
        description="none = n_k-weighted FedAvg of one secure sum; otherwise grouped secure "
        "aggregation with this rule over the group means (plaintext mode: over single updates).",
    )
    group_size: int = Field(
        default=3, ge=2, le=1000, description="Boxes per securely summed group (at least)."
    )
    beta: float = Field(
        default=0.1, gt=0, lt=0.5, description="trimmed_mean: share of group means cut per side."
    )
    f: int = Field(default=1, ge=1, le=100, description="multi_krum: bad groups tolerated.")
    max_norm: float | None = Field(
        default=None, gt=0, description="norm_bound: L2 bound of a group mean; unset = median."
    )
    secure_aggregation: bool = Field(
        default=True,
        description="false = plaintext rounds: each box sends its clipped update over TLS, "
        "the rule runs over single updates; only boxes with allow_plaintext answer.",
    )
    # 8 bits: the masked vector is about a third of the 32-bit one at the same accuracy
    # (bench/quantized_updates.py); 32 keeps the sum exact to ~2^-30 of the bound.
    update_bits: Literal[8, 16, 32] = Field(
        default=8,
        description="Bits per update value inside secure aggregation: 8 or 16 = rotated, "
        "stochastically rounded updates in a modular sum sized for the round (bits + "
        "ceil(log2 boxes)); 32 = the full 32-bit field.",
    )
    train_groups: tuple[str, ...] = Field(
        default=("ae", "head"),
        description="Parameter groups each round trains and sends (model.meta.PARAM_GROUPS): "
        "'ae' (the normal model), 'head' (the classifier); boxes send only these coordinates.",
    )
    epsilon_budget: float = Field(
        default=8.0,
        gt=0,
        description="User-level DP budget at dp_delta: a round whose projected epsilon after "
        "the planned rounds (aggregator.rounds; 0 = the next round) exceeds it is not started; "
        "inf = no budget.",
    )
    intake_workers: int = Field(
        default=0,
        ge=0,
        le=16,
        description="Worker processes that take the masked vectors (MQTT 5 shared "
        "subscription) and hand the aggregator partial sums; 0 = it takes them itself. "
        "Worker n connects with clients/intake-<n>.crt beside cert_file "
        "(`edgeagent pki issue-intake`).",
    )

    @field_validator("robust")
    @classmethod
    def _rule(cls, v: str) -> str:
        # the choices come from the rules themselves, so a new rule needs no second list here
        if v not in ROBUST_CHOICES:
            raise ValueError(f"unknown rule {v!r}; choose one of {', '.join(ROBUST_CHOICES)}")
        return v

    @field_validator("train_groups")
    @classmethod
    def _groups(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from edgeagent.model.meta import PARAM_GROUPS

        unknown = [g for g in v if g not in PARAM_GROUPS]
        if not v or unknown or len(set(v)) != len(v):
            raise ValueError(
                f"name distinct groups, at least one, of {', '.join(sorted(PARAM_GROUPS))}"
                + (f" (unknown: {', '.join(unknown)})" if unknown else "")
            )
        return tuple(sorted(v))

    @field_validator("epsilon_budget")
    @classmethod
    def _budget(cls, v: float) -> float:
        if math.isnan(v):
            raise ValueError("must be a number > 0 (inf = no budget)")
        return v

    @model_validator(mode="after")
    def _counts(self) -> AggregatorSection:
        if self.intake_workers and (self.robust != "none" or not self.secure_aggregation):
            # a worker's partial sum mixes boxes of any group, and plaintext rounds have no
            # masked vectors: both need every update in the aggregator itself
            raise _keyed(
                "intake_workers",
                "needs robust = 'none' and secure_aggregation = true (grouped and plaintext "
                "rounds take their updates in the aggregator); set intake_workers = 0",
            )
        if self.min_survivors > self.min_boxes:
            raise _keyed("min_survivors", f"must not exceed min_boxes ({self.min_boxes})")
        if self.max_boxes < self.min_boxes:
            raise _keyed("max_boxes", f"must be at least min_boxes ({self.min_boxes})")
        # noise left at its default with secure_aggregation = false: plaintext rounds add
        # central noise (noise_mode; the Aggregator logs it). Set explicitly: a contradiction.
        if (
            not self.secure_aggregation
            and self.noise == "distributed"
            and "noise" in self.model_fields_set
        ):
            raise _keyed(
                "noise",
                "'distributed' needs secure aggregation (each box's share of the noise is "
                "hidden only inside a masked sum); use 'central' with "
                "secure_aggregation = false",
            )
        if self.robust != "none" and not self.secure_aggregation:
            from edgeagent.fl.robust import min_groups

            need = min_groups(self.robust, **self.rule_params())
            if self.min_boxes < need:
                raise _keyed(
                    "min_boxes",
                    f"robust = {self.robust!r} needs at least {need} updates, so min_boxes "
                    f"must be >= {need}",
                )
        elif self.robust != "none":
            from edgeagent.fl.robust import min_groups

            need = min_groups(self.robust, **self.rule_params())
            if self.min_boxes < need * self.group_size:
                raise _keyed(
                    "min_boxes",
                    f"robust = {self.robust!r} needs at least {need} groups of group_size = "
                    f"{self.group_size}, so min_boxes must be >= {need * self.group_size} "
                    "(raise min_boxes or lower group_size)",
                )
            if self.min_survivors > self.group_size:
                raise _keyed(
                    "min_survivors",
                    f"must not exceed group_size ({self.group_size}) with robust = "
                    f"{self.robust!r}: each group is unmasked with >= group_size survivors",
                )
        return self

    @property
    def noise_mode(self) -> str:
        """Where DP noise is added: plaintext rounds always add it centrally."""
        return self.noise if self.secure_aggregation else "central"

    def rule_params(self) -> dict[str, Any]:
        """The parameters ``robust.grouped_aggregate`` takes for the configured rule."""
        if self.robust == "trimmed_mean":
            return {"beta": self.beta}
        if self.robust == "multi_krum":
            return {"f": self.f}
        if self.robust == "norm_bound":
            return {"max_norm": self.max_norm}
        return {}


class OutboxSection(_Section):
    """Store-and-forward limits; when full, the oldest low-priority messages go first."""

    max_messages: int = Field(default=100_000, ge=1)
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    max_age_s: float = Field(default=7 * 86400, gt=0)
    min_free_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=0,
        description="Below this much free space in state_dir only alerts are stored "
        "(status, telemetry and updates are refused); 0 turns the floor off.",
    )
    reserve_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=0,
        description="Pre-allocated state_dir/reserve.bin, released when an alert "
        "cannot be stored otherwise; 0 keeps no reserve.",
    )


class StatusSection(_Section):
    """Health telemetry and the watchdog's idea of 'stuck'."""

    # 5 minutes: the retained status is for dashboards; `edgeagent status` asks the daemon live.
    interval_s: float = Field(default=300.0, ge=1.0, le=86400, description="Status publish period.")
    stall_after_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="A component that neither progresses nor reports idle for this long is stuck.",
    )


class ControlSection(_Section):
    """The local control socket used by ``edgeagent status``."""

    socket_path: Path = Path("/run/edgeagent/control.sock")

    @field_validator("socket_path")
    @classmethod
    def _len(cls, v: Path) -> Path:
        if len(str(v).encode()) > 107:
            raise ValueError("unix socket paths are limited to 107 bytes; choose a shorter path")
        return v


class Config(_Section):
    """The whole agent configuration (one TOML file)."""

    agent: AgentSection
    devices: DevicesSection = DevicesSection()
    windows: WindowsSection = WindowsSection()
    detection: DetectionSection = DetectionSection()
    learning: LearningSection = LearningSection()
    feedback: FeedbackSection = FeedbackSection()
    federation: FederationSection = FederationSection()
    aggregator: AggregatorSection = AggregatorSection()
    outbox: OutboxSection = OutboxSection()
    status: StatusSection = StatusSection()
    control: ControlSection = ControlSection()

    @model_validator(mode="after")
    def _stall_vs_window(self) -> Config:
        if self.status.stall_after_s < self.windows.hop_s:
            raise _keyed(
                "status.stall_after_s",
                f"must be at least windows.hop_s ({self.windows.hop_s}), "
                "or a healthy pipeline looks stuck between windows",
            )
        return self


_FIXES: dict[str, str] = {
    "missing": "add this key",
    "extra_forbidden": "remove it or fix its spelling",
    "literal_error": "use one of the listed values",
    "bool_type": "use true or false",
    "bool_parsing": "use true or false",
    "int_type": "use a whole number",
    "int_parsing": "use a whole number",
    "int_from_float": "use a whole number",
    "float_type": "use a number",
    "float_parsing": "use a number",
    "string_type": 'use a quoted string, e.g. "value"',
    "tuple_type": "use a list, e.g. [...]",
    "list_type": "use a list, e.g. [...]",
    "model_type": "use a table, e.g. [section]",
    "model_attributes_type": "use a table, e.g. [section]",
    "dict_type": "use a table of key = value",
}


def _problem(err: Mapping[str, Any], section_keys: Mapping[str, list[str]]) -> str:
    """Turn one pydantic error into a sentence that says what is wrong and how to fix it."""
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid"))
    if kind == "value_error":
        # Our own validators already explain the fix; drop pydantic's prefix.
        return msg.removeprefix("Value error, ")
    fix = _FIXES.get(kind)
    if kind == "extra_forbidden":
        parent = ".".join(str(p) for p in err["loc"][:-1] if not isinstance(p, int))
        known = section_keys.get(parent)
        if known:
            fix = f"{fix}; known keys here: {', '.join(known)}"
    if kind.startswith(("greater_than", "less_than")):
        fix = "change the value to fit the limit"
    return f"{msg}; {fix}" if fix else msg


def _section_keys() -> dict[str, list[str]]:
    """Known keys per dotted section, for 'did you mean' hints on unknown keys."""
    out: dict[str, list[str]] = {"": list(Config.model_fields)}

    def walk(model: type[BaseModel], prefix: str) -> None:
        out[prefix] = list(model.model_fields)
        for name, f in model.model_fields.items():
            ann = f.annotation
            args = getattr(ann, "__args__", ())
            for cand in (ann, *args):
                if isinstance(cand, type) and issubclass(cand, BaseModel):
                    walk(cand, f"{prefix}.{name}" if prefix else name)

    walk(Config, "")
    return out


def _to_errors(exc: ValidationError) -> list[ConfigError]:
    keys = _section_keys()
    errors: list[ConfigError] = []
    for err in exc.errors(include_url=False):
        loc = err.get("loc", ())
        dotted = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc)
        dotted = dotted.replace(".[", "[")
        value = err.get("input") if err.get("type") != "missing" else None
        problem = _problem(err, keys)
        if problem.startswith("@"):
            sub, _, problem = problem[1:].partition("@")
            dotted = f"{dotted}.{sub}" if dotted else sub
            for part in sub.split("."):
                value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, dict | list) and len(repr(value)) > 80:
            value = "{...}" if isinstance(value, dict) else "[...]"
        errors.append(ConfigError(dotted or "<root>", value, problem))
    return errors


def parse_config(data: Mapping[str, Any]) -> Config:
    """Validate an already-parsed TOML document; raise ConfigError(s) on any problem."""
    try:
        return Config.model_validate(dict(data))
    except ValidationError as exc:
        errors = _to_errors(exc)
        if len(errors) == 1:
            raise errors[0] from None
        raise ConfigErrors(errors) from None


def load_config(path: str | Path = DEFAULT_PATH) -> Config:
    """Read and validate the TOML file at ``path``.

    Missing files, unreadable files and TOML syntax errors are ConfigErrors too
    (key ``<file>``), so the CLI reports every startup problem the same way.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            "<file>",
            str(p),
            f"file not found; create it from {EXAMPLE_CONFIG} (or run `edgeagent service "
            "install`, which puts it in /etc/edgeagent/config.toml), or pass -c FILE",
        ) from None
    except OSError as exc:
        raise ConfigError("<file>", str(p), f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("<file>", str(p), "not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("<file>", str(p), f"TOML syntax error: {exc}") from None
    return parse_config(data)


def _is_secret(model: type[BaseModel], name: str) -> bool:
    extra = model.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("secret"))


def redacted(cfg: BaseModel) -> dict[str, Any]:
    """The config as plain JSON-able data with every secret field blanked.

    Unset secrets stay ``None`` so an engineer can still see whether one is set.
    """
    out: dict[str, Any] = {}
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        if _is_secret(type(cfg), name):
            out[name] = None if value is None else REDACTED
        else:
            out[name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return redacted(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, SecretStr):  # a secret not marked as such still never leaks
        return REDACTED
    return value


# Free-form maps (not sections) that render as inline tables in ``show``.
_INLINE_MAPS = frozenset({"thresholds"})


def to_toml(data: Mapping[str, Any]) -> str:
    """Render redacted config data as TOML (sections, arrays of tables; None omitted)."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{_key(k)} = {scalar(x)}" for k, x in v.items()) + " }"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    def table(prefix: str, d: Mapping[str, Any], array: bool = False) -> None:
        if prefix:
            lines.extend(["", f"[[{prefix}]]" if array else f"[{prefix}]"])
        nested: list[tuple[str, Any]] = []
        for k, v in d.items():
            if v is None:
                continue
            is_section = isinstance(v, dict) and k not in _INLINE_MAPS
            is_array = isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)
            if is_section or is_array:
                nested.append((k, v))
            else:
                lines.append(f"{_key(k)} = {scalar(v)}")
        for k, v in nested:
            sub = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                table(sub, v)
            else:
                for item in v:
                    table(sub, item, array=True)

    table("", data)
    return "\n".join(lines).lstrip("\n") + "\n"


def _key(k: str) -> str:
    return k if re.match(r"^[A-Za-z0-9_-]+$", k) else '"' + k + '"'
