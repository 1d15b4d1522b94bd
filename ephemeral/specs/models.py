"""The cluster spec format: pydantic models for ``RayCluster`` and ``SparkCluster`` YAML files.

Field names in YAML are camelCase, as in the Kubernetes objects they become. Every model forbids
unknown fields, so a typo fails loudly instead of being silently ignored.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from ephemeral.settings import JOB_ENV_NEVER
from ephemeral.specs.labels import KEY_HELP, VALUE_HELP, is_label_key, is_label_value
from ephemeral.specs.pip_credentials import credentials_problem, masked_uri, pip_entry_problem
from ephemeral.specs.quantities import (
    Duration,
    RayMemory,
    SparkDaemonMemory,
    SparkJvmMemory,
    duration_seconds,
    memory_bytes,
    shown,
)

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_HELP = "lowercase letters, digits and '-', starting and ending with a letter or digit"
_VERSION_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")
_RESOURCE_NAME = re.compile(r"^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_SCRIPT_PATH = re.compile(r"/[A-Za-z0-9._/-]+")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# An image reference as container runtimes parse it (the distribution project's grammar):
# [host[:port]/]path[:tag][@algorithm:hex], where the first part is a registry host only when it
# has a dot or a port or is localhost (else it is part of the path, in lower case). A reference
# they refuse would reach Kubernetes and leave the pods pulling until the setup's ready timeout.
_HOST_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IMAGE_HOST = re.compile(rf"(?:{_HOST_PART}(?:\.{_HOST_PART})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_PATH = re.compile(
    rf"{_PATH_PART}(?:/{_PATH_PART})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?")


def image_ref_ok(ref: str) -> bool:
    name = ref.split("@", 1)[0]
    head, slash, last = name.rpartition("/")
    if len(head + slash + last.split(":", 1)[0]) > 255:  # the runtimes' limit for the name
        return False
    host, slash, rest = ref.partition("/")
    if slash and ("." in host or ":" in host or host == "localhost"):
        return bool(_IMAGE_HOST.fullmatch(host)) and bool(_IMAGE_PATH.fullmatch(rest))
    return bool(_IMAGE_PATH.fullmatch(ref))

SPEC_NAME_MAX = 30  # cluster names are eph-<spec>-<10 hex>, at most 47 characters (RayJob's limit)
GROUP_NAME_MAX = 15


def dns_label(value: str, max_len: int) -> str:
    if len(value) > max_len:
        raise ValueError(f"{value!r} is {len(value)} characters long; at most {max_len} allowed")
    if not DNS1123_LABEL.fullmatch(value):  # match's $ lets a trailing newline through
        raise ValueError(f"{value!r} is not a DNS-1123 label ({DNS1123_HELP})")
    return value


def dns_subdomain(value: str) -> str:
    """A DNS-1123 subdomain (``cluster.local``): dot-separated labels, at most 253 characters."""
    if len(value) > 253 or not all(DNS1123_LABEL.fullmatch(part) for part in value.split(".")):
        raise ValueError(f"{value!r} is not a DNS-1123 subdomain such as cluster.local "
                         f"(dot-separated labels: {DNS1123_HELP}; at most 253 characters)")
    return value


def repeated(names: Iterable[str]) -> list[str]:
    """Names that occur more than once, sorted."""
    seen = Counter(names)
    return sorted(n for n, count in seen.items() if count > 1)


class Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        str_strip_whitespace=False,
        # A refused value may be a secret (a pip URL's token, a Spark secret key's value): it
        # must not ride along in the ValidationError a SpecError is raised from, nor in a
        # traceback of it (a DAG import error, a task log).
        hide_input_in_errors=True,
        # Each field's docstring is its description in the JSON Schema: editors' hover text.
        use_attribute_docstrings=True,
    )


_NON_FINITE = frozenset({"nan", "inf", "infinity"})  # the words float() reads, without a sign


def _plain_number(v: Any) -> Any:
    # YAML reads an unquoted yes, no, on, off, true or false as a boolean, and pydantic would
    # take it as 1 or 0: `replicas: yes` must not be a one-node cluster.
    if isinstance(v, bool):
        raise ValueError(f"{str(v).lower()} is not a number (YAML reads an unquoted yes, no, on, "
                         "off, true or false as true or false): write a number")
    # nan or inf (YAML's .nan, a string "nan", a flag's --cpu nan) fails a bound's comparison
    # and would be refused as "not less than or equal to 1024", which is no reason.
    if (isinstance(v, float) and not math.isfinite(v)) or (
            isinstance(v, str) and v.strip().lstrip("+-").lower() in _NON_FINITE):
        raise ValueError(f"{str(v).strip()} is not a finite number: write a number such as 2")
    return v


Number = BeforeValidator(_plain_number)
"""On every number of a spec and of its overrides."""


def _millicores(v: float) -> float:
    """Kubernetes counts CPU in millicores: 0.0001 would be rendered as ``0m``."""
    if abs(v * 1000 - round(v * 1000)) > 1e-6:
        raise ValueError(f"{v} is not a whole number of millicores; use a multiple of 0.001 "
                         "(0.5 for 500m)")
    return v


# No description here: it would stand in for each field's own (their rules differ by engine).
PositiveCpu = Annotated[float, Field(gt=0, le=1024), Number, AfterValidator(_millicores)]
GpuCount = Annotated[int, Field(ge=0, le=64), Number]


class Toleration(Model):
    """A pod toleration, checked by the rules of Kubernetes' own ``ValidateTolerations``
    (pkg/apis/core/validation), so a spec the API server would refuse fails here, before any
    object is created."""

    key: str | None = None
    """The taint's key; empty with operator Exists tolerates every taint."""
    operator: Literal["Equal", "Exists"] = Field(default="Equal", validate_default=True)
    """Equal (key and value match) or Exists (the key alone)."""
    value: str | None = None
    """The taint's value, with operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """The taint effect tolerated; empty tolerates all."""
    toleration_seconds: Annotated[int | None, Number] = Field(default=None, ge=0)
    """With NoExecute: how long a pod stays after the taint appears."""

    @field_validator("key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        if v and not is_label_key(v):  # a taint key is a qualified name, as a label key is
            raise ValueError(f"{v!r} is not a taint key: {KEY_HELP}")
        return v

    @field_validator("operator")
    @classmethod
    def _operator(cls, v: str, info: ValidationInfo) -> str:
        if "key" in info.data and not info.data["key"] and v != "Exists":  # (a bad key: said)
            raise ValueError("operator must be Exists when key is empty (that tolerates every "
                             "taint); set key, or operator: Exists")
        return v

    @field_validator("value")
    @classmethod
    def _value(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v and info.data.get("operator") == "Exists":
            raise ValueError("value must be empty when operator is Exists (Exists matches any "
                             "value); remove value, or use operator: Equal")
        if v and not is_label_value(v):
            raise ValueError(f"{v!r} is not a taint value: {VALUE_HELP}")
        return v

    @field_validator("toleration_seconds")
    @classmethod
    def _seconds(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and info.data.get("effect") != "NoExecute":
            raise ValueError("tolerationSeconds applies only to effect: NoExecute (how long a "
                             "pod stays on a node tainted NoExecute); set effect: NoExecute, or "
                             "remove tolerationSeconds")
        return v


class Placement(Model):
    """Where pods of a group may run on Kubernetes (ignored by the local backend)."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the pods must have (Kubernetes; noted on the local backend)."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Taints the pods tolerate (Kubernetes; noted on the local backend)."""

    @field_validator("node_selector")
    @classmethod
    def _node_selector(cls, v: dict[str, str]) -> dict[str, str]:
        # The API server refuses a pod whose selector is no label; refused here, that is
        # before any object of the cluster exists, by name.
        for key, value in v.items():
            if not is_label_key(key):
                raise ValueError(f"key {key!r} is not a node label key: {KEY_HELP}")
            if not is_label_value(value):
                raise ValueError(f"{key}: {value!r} is not a node label value: {VALUE_HELP}")
        return v


NVIDIA_GPU = "nvidia.com/gpu"


class GpuFields(Model):
    gpus: GpuCount = 0
    """GPUs per node (0-64): what the node offers its work (a Ray node's --num-gpus, a Spark
    worker's gpu resource for its executors) and, on Kubernetes, its pod's GPU limit."""
    gpu_resource: str = NVIDIA_GPU
    """The extended resource the GPUs are requested as on Kubernetes."""

    @field_validator("gpu_resource")
    @classmethod
    def _resource_name(cls, v: str) -> str:
        if not _RESOURCE_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not an extended resource name such as nvidia.com/gpu")
        return v


# A Secret's data key, as the API server accepts one (a pod naming another key never starts).
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")


class SecretKeyRef(Model):
    name: str
    """The Kubernetes Secret (in the clusters' namespace)."""
    key: str
    """The key of that Secret."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return dns_subdomain(v)  # a Secret's name, as Kubernetes names objects (my.secret)

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not _SECRET_KEY.fullmatch(v) or v in (".", ".."):
            raise ValueError(f"{v!r} is not a Secret's key: letters, digits, '-', '_' and '.', "
                             "at most 253 characters")
        return v


# The one rule for which keys name a secret: Spark's own default of spark.redaction.regex
# (secret|password|token|access[.]?key) and the storage keys it misses (Azure's account.key,
# S3's server-side encryption.key, GCS's service.account.private.key, OBS's sk, ADLS's
# oauth2.credential; not spark.ssl's privateKey, a PEM file's path), matched word by word so camelCase and snake_case keys count alike
# (keyStorePassword, awsAccessKeyId) and a tokenizer is no token. A key naming where a secret
# is (a file, a path, a binding or provider class) is no secret.
_WORD_BREAK = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|[-_.]+")
_SECRET_WORDS = re.compile(r"secret|passw(?:or)?d|token(?!i[sz])"
                           r"|(?:access|account|encryption|api)\.?keys?(?:\.|$)"
                           r"|account\.private\.key(?:\.|$)"
                           r"|(?:^|\.)(?:sk|credential)(?:\.|$)")
_NAMES_A_PLACE = re.compile(r"(?:file|path|\.binding|\.provider|\.type|\.bits)$"
                            r"|secret\.key\.ref\.|\.secrets\.")
# A PEM block (-----BEGIN PRIVATE KEY-----, -----BEGIN RSA PRIVATE KEY-----, ...) in a value.
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]+-----")


def secret_key(key: str) -> bool:
    """Whether a conf key (``spark.hadoop.fs.s3a.secret.key``) names a secret."""
    words = ".".join(w.lower() for w in _WORD_BREAK.split(key) if w)
    return bool(_SECRET_WORDS.search(words)) and not _NAMES_A_PLACE.search(words)


# A variable's name names a secret when the conf rule says so and it ends in the secret itself
# (AWS_SECRET_ACCESS_KEY, HF_TOKEN, DB_PASSWORD), not in what is about one (SECRETS_DIR,
# TOKEN_URL, SECRET_NAME, PASSWORD_MIN_LENGTH); a switch (HF_HUB_DISABLE_IMPLICIT_TOKEN=1) holds
# none either way.
_SECRET_LAST_WORD = re.compile(r"(?:^|\.)(?:secret|passw(?:or)?d|token|keys?|credentials?|sk)$")
_FLAG_VALUES = frozenset({"0", "1", "true", "false", "yes", "no", "on", "off"})


# Names the conf rule does not see as keys but every tool reads as a secret: PGPASSWORD,
# MYSQL_PWD, a passphrase, an API key written as one word, CLIENT_CREDENTIALS, a private or
# signing key, a personal access token of a code host.
_SECRET_NAME_ALSO = re.compile(r"(?:^|\.)(?:[a-z0-9]*passw(?:or)?d|passphrase|apikey|credentials)$"
                               r"|\.pwd$|(?:^|\.)(?:private|fernet|signing|stripe)\.key$"
                               r"|(?:^|\.)(?:github|gitlab|gh|git|hf)\.pat$")


def secret_name(name: str) -> bool:
    """Whether an environment variable's name says its value is a secret."""
    words = ".".join(w.lower() for w in _WORD_BREAK.split(name) if w)
    return (secret_key(name) and bool(_SECRET_LAST_WORD.search(words))) \
        or bool(_SECRET_NAME_ALSO.search(words))


# Values that are a credential by their shape, whatever they are called: code hosts' and model
# hubs' tokens, cloud access key ids, chat and LLM API keys, JWTs, storage connection strings,
# chat webhooks.
_TOKEN_SHAPES = re.compile(
    r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|glpat-[A-Za-z0-9_-]{20,}"
    r"|sk-(?:proj-|ant-)[A-Za-z0-9_-]{20,}|sk-[A-Za-z0-9]{40,}|(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|hf_[A-Za-z0-9]{30,}|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    # Webhooks whose path is the credential (anyone holding it posts as the deployment).
    r"|hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_-]{20,}"
    r"|discord(?:app)?\.com/api/webhooks/[0-9]+/[A-Za-z0-9_-]{20,}"
    r"|webhook\.office\.com/webhookb2/[^\s\"']{20,})"
    r"|(?i:(?:AccountKey|SharedAccessKey|SharedAccessSignature)=[^;\s]+)")


def secret_value(value: str) -> str | None:
    """What makes ``value`` itself a secret (a PEM block, a URL with credentials or a signed
    URL's, a token by its shape), or None."""
    if _PEM.search(value):
        return "it holds a PEM block (a key belongs in a file or a Secret, not in a spec)"
    if (problem := credentials_problem(value)) is not None:  # user-info, signed URLs
        return problem
    if _TOKEN_SHAPES.search(value):
        return "it holds a token or key (its shape is a known credential's)"
    return None


_PEM_BLOCK = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|\Z)", re.S)
MASK = "***"


def _mask_shape(match: re.Match[str]) -> str:
    name, eq, _ = match[0].partition("=")  # AccountKey=...: the name stays, for the reader
    return f"{name}={MASK}" if eq else MASK


def masked_secrets(text: str) -> str:
    """``text`` with every credential ``secret_value`` refuses replaced by ``***``: URL
    user-info and signed-URL parameters (``masked_uri``), tokens and keys by their shape, PEM
    blocks. The one masking rule for what leaves the boundary as text (report URIs,
    notifications)."""
    return _TOKEN_SHAPES.sub(_mask_shape, masked_uri(_PEM_BLOCK.sub(MASK, text)))


def shown_uri(uri: str) -> str:
    """``uri`` masked (``masked_secrets``); a note in its place when the refusal rule still
    sees a credential in what masking left (one it cannot cut out cleanly)."""
    shown = masked_secrets(uri)
    left = shown.replace(f"{MASK}@", "").replace(MASK, "")  # the masks themselves are no secret
    if secret_value(left) is not None:
        return "(not shown: it holds a credential that cannot be masked)"
    return shown


# Names a spec may neither set nor read from the creating environment: what the job allow-list
# never lets a cluster inherit (Airflow's settings and ours: the database URL, the kubeconfig,
# the markers teardown finds a cluster's processes by) and the cluster's own Ray token auth
# (the local backend sets it; KubeRay keeps a container's own RAY_AUTH_MODE/RAY_AUTH_TOKEN/
# RAY_ENABLE_K8S_TOKEN_AUTH instead of its own, so a spec could turn authentication off).
RESERVED_ENV = (*JOB_ENV_NEVER, "RAY_AUTH_", "RAY_ENABLE_K8S_TOKEN_AUTH")


def reserved_env(name: str) -> bool:
    return name.upper().startswith(RESERVED_ENV)


# Names the backends set per node, which a spec's value would silently lose to (locally) or
# fight (on Kubernetes): which GPUs a node sees is the backend's and the device plugin's to
# say, and the address of the cluster a job talks to is its own cluster's.
BACKEND_ENV = frozenset({"CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
                         "HIP_VISIBLE_DEVICES", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"})


def env_name_problem(name: str) -> str | None:
    """Why ``name`` is no environment variable name, or None."""
    if _ENV_NAME.fullmatch(name):
        return None
    return f"{name!r} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"


def settable_env_problem(name: str) -> str | None:
    """Why neither a spec's ``runtimeEnv.env`` nor a job's own environment (``--env``,
    ``runtime_env.env_vars``, a spark-submit's env) may set ``name``, or None: no variable
    name, or one the backend sets (``BACKEND_ENV``). The reserved names (``reserved_env``) are
    judged apart: a job may set one of them."""
    if (problem := env_name_problem(name)) is not None:
        return problem
    if name in BACKEND_ENV:  # names are case-sensitive: cuda_visible_devices is another one
        return (f"{name!r} is set by the backend on each node (the GPUs a node gets come from "
                "the spec's gpus; a job's cluster address is its own cluster's): remove it, or "
                "size the group's gpus instead")
    return None


def literal_secret(name: str, value: str) -> str | None:
    """Why the literal ``value`` of the variable ``name`` is a secret, or None: the value is
    one (``secret_value``), or the name says so (``secret_name``) and the value is no switch.
    The one rule for a spec's ``runtimeEnv.env`` and a job's own environment."""
    why = secret_value(value)
    if why is None and value and secret_name(name) and not _names_no_secret(value):
        why = f"{name} names a secret (judged by its name)"
    return why


# Values a secret's name may hold that are no secret: a switch, where the secret is (a key
# file's path, GOOGLE_APPLICATION_CREDENTIALS=/var/run/secrets/gcp/key.json), or a tokenizer's
# special token (PAD_TOKEN=[PAD], EOS_TOKEN=</s>).
_WHERE_OR_MARKUP = re.compile(r"(?:/|file://)\S*|\[[^\]\s]{1,20}\]|<[^>\s]{1,20}>")


def _names_no_secret(value: str) -> bool:
    text = value.strip()
    return text.lower() in _FLAG_VALUES or _WHERE_OR_MARKUP.fullmatch(text) is not None


def _env_var_name(v: str, why: str, fix: str) -> str:
    if (problem := env_name_problem(v)) is not None:
        raise ValueError(problem)
    if reserved_env(v):
        raise ValueError(f"{v!r} is reserved ({why}; reserved: names starting with "
                         f"{', '.join(RESERVED_ENV)}): {fix}")
    return v


class EnvVar(Model):
    """An environment variable for the cluster's processes: a literal, or a reference by name.

    Secrets are never written into a spec: ``secretKeyRef`` names a Kubernetes secret (the local
    backend reads the variable of the same name from its own environment) and ``fromEnv`` names a
    variable of the environment that creates the cluster. Reserved names (``RESERVED_ENV``) are
    refused both as names and as ``fromEnv`` sources.
    """

    name: str
    """The variable's name, as the processes see it."""
    value: str | None = None
    """A literal value; never a secret (use secretKeyRef or fromEnv)."""
    secret_key_ref: SecretKeyRef | None = None
    """A Kubernetes Secret's key; the local backend reads the variable of this name from its own
    environment."""
    from_env: str | None = None
    """A variable of the environment that creates the cluster (local backend only)."""

    @field_validator("name")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if (problem := settable_env_problem(v)) is not None:
            raise ValueError(problem)
        return _env_var_name(v, "ephemeral, Airflow and the cluster's Ray authentication own "
                                "such names, and teardown finds a cluster's processes by "
                                "ephemeral's markers", "pick another name")

    @field_validator("value")
    @classmethod
    def _literal(cls, v: str | None, info: ValidationInfo) -> str | None:
        # The conf rule (secret_key) judges the name too: AWS_SECRET_ACCESS_KEY, WANDB_API_KEY
        # or DB_PASSWORD with a literal is a secret written into the spec.
        why = None if v is None else literal_secret(str(info.data.get("name", "")), v)
        if why is not None:
            raise ValueError(f"a secret has no place in a spec ({why.split(';')[0]}): put it "
                             "in a Kubernetes Secret and use secretKeyRef, or use fromEnv on "
                             "the local backend")
        return v

    @field_validator("from_env")
    @classmethod
    def _source(cls, v: str | None) -> str | None:
        if v is None:
            return v
        return _env_var_name(v, "such variables hold Airflow's and ephemeral's settings and "
                                "credentials, which never reach a cluster",
                             "put the value the jobs need in a variable of its own and name "
                             "that in fromEnv")

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        given = [f for f in ("value", "secret_key_ref", "from_env") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of value, secretKeyRef or fromEnv")
        return self


def _requirement(entry: str) -> str:
    """One PEP 508 requirement (``name[extras]>=version``, ``name @ url``) without credentials
    in its URL: a typo fails here, not later inside every job's environment set-up, and a token
    never reaches the handle, XCom, state or Ray (``ephemeral.specs.pip_credentials``)."""
    from packaging.requirements import InvalidRequirement, Requirement

    if (problem := pip_entry_problem(entry)) is not None:
        raise ValueError(problem)
    try:
        if entry != entry.strip() or "\n" in entry:
            raise InvalidRequirement("surrounding spaces or a line break")
        Requirement(entry)
    except InvalidRequirement as err:
        raise ValueError(f"{entry!r} is not a PEP 508 requirement such as 'pandas>=2' or "
                         f"'pkg @ https://host/pkg.whl' (pip options are not accepted): "
                         f"{err}") from err
    return entry


class RuntimeEnv(Model):
    pip: list[Annotated[str, AfterValidator(_requirement)]] = Field(default_factory=list)
    """Pip requirements every Ray job submitted through ephemeral (CLI ``submit``,
    ``RayJobOperator``) gets in its runtime environment; a job's own entry for a package wins
    (``ephemeral.jobs.runtime_env``). No credentials in URLs (``user:token@``)."""
    env: list[EnvVar] = Field(default_factory=list)
    """Environment of the cluster's processes (so of every job on it)."""

    @field_validator("pip")
    @classmethod
    def _requirements(cls, v: list[str]) -> list[str]:
        """Each package once (entries are checked one by one by ``_requirement`` first)."""
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name

        names = [canonicalize_name(Requirement(entry).name) for entry in v]
        if dup := repeated(names):
            raise ValueError(f"packages listed twice: {', '.join(dup)}")
        return v

    @field_validator("env")
    @classmethod
    def _unique(cls, v: list[EnvVar]) -> list[EnvVar]:
        if dup := repeated(e.name for e in v):
            raise ValueError(f"environment variables defined twice: {', '.join(dup)}")
        return v


TTL_MAX = "30d"


class Lifetime(Model):
    ttl: Duration = "6h"
    """Hard limit: the reaper deletes the cluster once it is this old (at most ``TTL_MAX``)."""
    idle_timeout: Duration | None = None
    """The reaper deletes a cluster that has run no job, Spark application or Connect session
    for this long since it became ready or its last work ended (``ephemeral.reaper``)."""

    @field_validator("ttl")
    @classmethod
    def _bounded(cls, v: str) -> str:
        # The hard limit must be one: 100000d would switch it off (and past year 9999 the
        # expiry stamp itself fails, later, under another field's name).
        if duration_seconds(v) > duration_seconds(TTL_MAX):
            raise ValueError(f"{v} is longer than {TTL_MAX}, the longest lifetime a cluster "
                             "may have; a longer run should checkpoint and resume on a new one")
        return v

    @model_validator(mode="after")
    def _idle_within_ttl(self) -> Lifetime:
        if self.idle_timeout and duration_seconds(self.idle_timeout) >= self.ttl_seconds:
            raise ValueError(f"idleTimeout ({self.idle_timeout}) is not shorter than ttl "
                             f"({self.ttl}), so it would never apply: shorten it or remove it")
        return self

    @property
    def ttl_seconds(self) -> int:
        return duration_seconds(self.ttl)

    @property
    def idle_timeout_seconds(self) -> int | None:
        return duration_seconds(self.idle_timeout) if self.idle_timeout else None


def ray_cpus_problem(v: float) -> str | None:
    """Why ``v`` CPUs cannot be a Ray node's: Ray counts a node's CPUs in whole numbers (``ray
    start --num-cpus``; KubeRay rounds a pod's limit up), so 0.5 would offer tasks 1 CPU in a
    half-CPU limit, and they would run throttled at half the speed Ray plans for."""
    if v == int(v):
        return None
    return (f"{v} CPUs: Ray counts a node's CPUs in whole numbers (it would offer tasks "
            f"{math.ceil(v)} in a {v}-CPU limit); give a whole number")


class RayHead(GpuFields, Placement):
    cpu: PositiveCpu = 1
    """The head's CPUs: its pod's; a whole number when it runs tasks (Ray counts whole CPUs)."""
    memory: RayMemory = "2Gi"
    """The head's memory (e.g. 8Gi): its pod's limit, Ray's --memory."""
    run_tasks: bool = False
    """Whether the head offers its CPUs to tasks (off: the head only coordinates, as on KubeRay)."""

    @model_validator(mode="after")
    def _whole_cpus(self) -> RayHead:
        if self.run_tasks and (why := ray_cpus_problem(self.cpu)):
            raise ValueError(f"cpu: {why}, or runTasks: false")
        return self


class RayWorkerGroup(GpuFields, Placement):
    name: str
    """The group's name, a DNS label: its nodes' names and the overrides' groups.<name>."""
    replicas: Annotated[int, Number] = Field(ge=1, le=1000)
    """Nodes the group starts with (and keeps, without autoscaling)."""
    min_replicas: Annotated[int | None, Number] = Field(default=None, ge=0, le=1000)
    """Autoscaling bounds (default ``replicas``): KubeRay's autoscaler on Kubernetes. The local
    backend does not autoscale: it starts ``replicas`` nodes, and says so."""
    max_replicas: Annotated[int | None, Number] = Field(default=None, ge=1, le=1000)
    """Autoscaling ceiling (default ``replicas``); also the most nodes an override may ask for."""
    cpu: PositiveCpu = 1
    """Each node's CPUs, a whole number (Ray counts whole CPUs)."""
    memory: RayMemory = "2Gi"
    """Each node's memory (e.g. 32Gi): its pod's limit, Ray's --memory."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return dns_label(v, GROUP_NAME_MAX)

    @field_validator("cpu")
    @classmethod
    def _whole_cpus(cls, v: float) -> float:
        if why := ray_cpus_problem(v):
            raise ValueError(why)
        return v

    @model_validator(mode="after")
    def _bounds(self) -> RayWorkerGroup:
        lo = self.min_replicas if self.min_replicas is not None else self.replicas
        hi = self.max_replicas if self.max_replicas is not None else self.replicas
        if lo > hi:
            raise ValueError(f"minReplicas ({lo}) is greater than maxReplicas ({hi})")
        if not lo <= self.replicas <= hi:
            raise ValueError(f"replicas ({self.replicas}) must lie between minReplicas ({lo}) "
                             f"and maxReplicas ({hi})")
        return self

    @property
    def min(self) -> int:
        return self.min_replicas if self.min_replicas is not None else self.replicas

    @property
    def max(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.replicas


VERSION_MAX = 999_999_999  # the digits a reference's @<N> may have (loader._MAX_VERSION_DIGITS)


def _version(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{shown(str(v))} is not a version: write a whole number such as 3, "
                         "unquoted")
    if not 1 <= v <= VERSION_MAX:
        raise ValueError(f"{v if v < 10**12 else 'a number that long'} is not a version from "
                         f"1 to {VERSION_MAX}")
    return v


class SpecBase(Model):
    name: str
    """The spec's name, a DNS label; clusters are named after it."""
    version: Annotated[int, BeforeValidator(_version)] = Field(ge=1, le=VERSION_MAX)
    """A whole number from 1 (YAML's unquoted 3): a reference resolves by it, so "3" or 3.0
    would be a version that validates but that ``@3`` never finds."""
    description: str = ""
    """Free text for people; not part of the content hash."""
    image: str = Field(min_length=1)
    """The container image on Kubernetes ([registry/]path[:tag][@sha256:...]); the local backend
    runs the installed Ray or Spark."""
    lifetime: Lifetime = Field(default_factory=Lifetime)
    """How long a cluster may live (ttl) and sit idle (idleTimeout)."""
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Overlays for places the spec runs, merged over the spec by ``apply_profile``."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return dns_label(v, SPEC_NAME_MAX)

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not image_ref_ok(v):
            raise ValueError(f"{v!r} is not an image reference such as "
                             "rayproject/ray:2.60.0-py311-cpu: [registry[:port]/]path[:tag]"
                             "[@sha256:digest], the path in lower case, no spaces")
        return v

    @field_validator("profiles")
    @classmethod
    def _profile_names(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for key in v:
            dns_label(key, 30)
        return v


def _engine_version(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not a release version such as \"2.60.0\" (quote it: YAML "
                         "reads an unquoted 2.60 as the number 2.6)")
    if not _VERSION_RE.fullmatch(v):
        raise ValueError(f"{v!r} is not a release version such as 2.60.0")
    return v


class RaySpec(SpecBase):
    kind: Literal["RayCluster"]
    """RayCluster."""
    ray_version: str
    """The Ray version the cluster runs (KubeRay's rayVersion; the local backend's installed Ray
    must be it)."""
    head: RayHead = Field(default_factory=RayHead)
    """The head node."""
    worker_groups: list[RayWorkerGroup] = Field(min_length=1, max_length=16)
    """Worker groups (1-16), each of identical nodes."""
    runtime_env: RuntimeEnv = Field(default_factory=RuntimeEnv)
    """The cluster's default Ray runtime environment and its nodes' variables."""

    @field_validator("ray_version", mode="before")
    @classmethod
    def _ver(cls, v: object) -> str:
        return _engine_version(v)

    @field_validator("worker_groups")
    @classmethod
    def _unique_groups(cls, v: list[RayWorkerGroup]) -> list[RayWorkerGroup]:
        if dup := repeated(g.name for g in v):
            raise ValueError(f"worker group names must be unique; repeated: {', '.join(dup)}")
        return v

    @property
    def engine(self) -> Literal["ray"]:
        return "ray"


class SparkMaster(Placement):
    cpu: PositiveCpu = 1
    """The master's CPUs, in steps of 0.001 (0.5 for 500m): its pod's on Kubernetes."""
    memory: SparkDaemonMemory = "1Gi"
    """The master daemon's memory (its JVM heap locally, its pod on Kubernetes)."""


class SparkWorkers(GpuFields, Placement):
    replicas: Annotated[int, Number] = Field(ge=1, le=1000)
    """Workers (standalone), or the most executors at once (operator mode)."""
    cores: Annotated[int, Number] = Field(ge=1, le=1024)
    """Each worker's cores, a whole number: what its executors get."""
    memory: SparkJvmMemory = "2Gi"
    """Each worker's memory, for its executors (at least Spark's minimum heap)."""
    discovery_script: str | None = None
    """Script that prints the GPUs of an executor as JSON (Spark resource discovery)."""

    @field_validator("discovery_script")
    @classmethod
    def _script_path(cls, v: str | None) -> str | None:
        # It is spliced into the worker's JVM options (SPARK_WORKER_OPTS): a space would add
        # options of its own (-Dspark.authenticate=false), a quote or $ reach the shell.
        if v is not None and not _SCRIPT_PATH.fullmatch(v):
            raise ValueError(f"{v!r} is not an absolute path of letters, digits and . _ / - "
                             "such as /opt/spark/examples/src/main/scripts/getGpusResources.sh")
        return v

    @model_validator(mode="after")
    def _gpu_discovery(self) -> SparkWorkers:
        if self.gpus and not self.discovery_script:
            raise ValueError("gpus > 0 needs discoveryScript (Spark finds GPUs by running it), "
                             "for example /opt/spark/examples/src/main/scripts/getGpusResources.sh")
        return self


def secret_conf_keys(conf: Mapping[str, str]) -> list[str]:
    """The keys of a Spark conf that set a secret, sorted: the key names one (``secret_key``) or
    the value is one (``secret_value``). The one rule for a spec's conf and a job's own."""
    return sorted(k for k, v in conf.items() if secret_key(k) or secret_value(v))


def no_secret_conf(conf: dict[str, str]) -> dict[str, str]:
    """A spec's conf is in the handle, XCom, the cluster's annotations and the Connect server's
    and spark-submit's command lines: a key that names a secret (``secret_key``) may not be set
    there, nor a value that is one (``secret_value``: a URL with credentials such as
    ``spark.jars.repositories=https://user:token@repo``, a PEM key block)."""
    secret = secret_conf_keys(conf)
    if secret:
        raise ValueError(f"{', '.join(secret)}: a secret has no place in a spec (it would reach "
                         "XCom, annotations and command lines); give it to the jobs through "
                         "their environment or a Kubernetes Secret, or use a credentials "
                         "provider (e.g. spark.hadoop.fs.s3a.aws.credentials.provider) or a "
                         "key file's path (e.g. ...service.account.json.keyfile)")
    return conf


# Keys the backends set themselves (backends/local/spark_nodes.py, kubernetes/render/spark.py
# and spark_operator.py, the auth properties files): a value in conf would come later on the
# Connect server's command line and win without a word: a driver address or port nothing
# publishes (a cluster that never becomes ready), scratch on a disk the pod does not mount, or
# authentication switched off. A key ending in "." is a family: every key under it.
_OWN_PORTS = "the backend gives the Connect server's driver its address and ports"
_DAEMONS = ("a setting of the standalone master and worker daemons, which the backend starts "
            "with its own; conf reaches applications only")
BACKEND_CONF: Mapping[str, str] = {
    "spark.master": "the backend points every application at its cluster",
    "spark.authenticate": "the backend authenticates every process of the cluster with its own "
                          "secret",
    # The secret and where it is read from; the rest of the family (enableSaslEncryption, a
    # hardening a user may add) is left to the user.
    "spark.authenticate.secret": "the backend authenticates every process of the cluster with "
                                 "its own secret",
    "spark.authenticate.secret.": "the backend authenticates every process of the cluster with "
                                  "its own secret",
    "spark.connect.authenticate.": "the backend gives the Connect server its own token",
    "spark.connect.grpc.binding.": "the backend publishes and probes the Connect port",
    "spark.driver.host": _OWN_PORTS,
    "spark.driver.bindAddress": _OWN_PORTS,
    "spark.driver.port": _OWN_PORTS,
    "spark.driver.blockManager.port": _OWN_PORTS,
    "spark.port.maxRetries": "the backend binds each port it publishes, or fails, rather than "
                             "moving onto another",
    "spark.ui.port": "the backend publishes the UI's port as an endpoint",
    "spark.ui.enabled": "the reaper's idle rule and the run report read the Connect server's "
                        "sessions and operations from its UI",
    "spark.local.dir": "the backend puts scratch files on the node's scratch volume",
    "spark.driver.memory": "set connect.memory instead",
    # Spark reads it in cluster mode only (the Connect server is a client-mode driver), and the
    # spark-operator puts the server's own cores after sparkConf: it never applied.
    "spark.driver.cores": "set connect.cpu instead",
    "spark.executor.resource.gpu.": "set workers.gpus, gpuResource and discoveryScript instead",
    "spark.kubernetes.executor.request.cores": "set workers.cores instead",
    "spark.kubernetes.executor.limit.cores": "set workers.cores instead",
    "spark.executor.memoryOverhead": "the backend sizes an executor's pod to workers.memory",
    # conf reaches applications (the Connect server, spark-submit drivers), never the daemons
    # the backend starts with settings of its own: accepted, these would do nothing.
    "spark.master.": _DAEMONS,
    "spark.worker.": _DAEMONS,
    "spark.deploy.": _DAEMONS,
    "spark.shuffle.service.": "no external shuffle service runs on the workers (dynamic "
                              "allocation tracks shuffle data instead); an executor told to use "
                              "one never registers",
    "spark.app.name": "the backend names the Connect server's application (a spark-submit "
                      "task names its own)",
    # Cluster mode would move the driver onto a worker (the Connect server the backend probes,
    # a driver whose output and result ephemeral reads), or be ignored for --deploy-mode.
    "spark.submit.deployMode": "ephemeral runs every driver in client mode, on the host that "
                               "starts it: the backend reaches the Connect server there, and "
                               "spark-submit through ephemeral reads its driver's output and "
                               "result file there",
}
# Of those, what a spark-submit driver of the cluster may not set either (the others are a
# driver's own where it runs): ephemeral points it at the cluster, authenticates it and runs it
# in client mode.
CLUSTER_CONF = ("spark.master", "spark.authenticate", "spark.authenticate.secret",
                "spark.authenticate.secret.", "spark.connect.authenticate.",
                "spark.submit.deployMode")


def backend_keys(conf: Iterable[str], owned: Iterable[str] = BACKEND_CONF) -> list[str]:
    """The keys of ``conf`` that are the backend's (among ``owned``: keys of ``BACKEND_CONF``;
    one ending in "." owns every key under it), sorted. The one rule for a spec's conf, its
    connect.conf and a spark-submit job's conf."""
    rules = tuple(owned)
    return sorted(k for k in conf
                  if any(k.startswith(r) if r.endswith(".") else k == r for r in rules))


def backend_reason(key: str) -> str:
    return next(why for rule, why in BACKEND_CONF.items()
                if (key.startswith(rule) if rule.endswith(".") else key == rule))


# What of the backend's keys a spec may state as the backend has it: no shuffle service.
_AS_THE_BACKEND_HAS_IT = {"spark.shuffle.service.enabled": "false"}


def no_backend_conf(conf: dict[str, str]) -> dict[str, str]:
    if owned := [k for k in backend_keys(conf)
                 if conf[k].strip().lower() != _AS_THE_BACKEND_HAS_IT.get(k)]:
        raise ValueError("; ".join(f"{k} is the backend's ({backend_reason(k)})" for k in owned)
                         + ": remove it")
    return conf


SparkConf = Annotated[dict[str, str], AfterValidator(no_secret_conf),
                      AfterValidator(no_backend_conf)]


class SparkConnect(Placement):
    enabled: bool = True
    """Whether the cluster runs a Spark Connect server (sc:// endpoint). With false, a spec
    file sets none of the server's other fields (nothing would use them)."""
    cpu: PositiveCpu = 1
    """The Connect server's CPUs, in steps of 0.001: its pod's on Kubernetes."""
    memory: SparkJvmMemory = "1Gi"
    """The Connect server's memory (its driver)."""
    conf: SparkConf = Field(default_factory=dict)
    """Spark settings for the Connect server only, after the spec's conf."""

    def customised(self) -> list[str]:
        """The fields that size, configure or place the server other than by default, by
        their spec names: what only a running server uses. The one rule for what a spec file
        with ``enabled: false`` may not set, and for what an effective spec notes."""
        default = SparkConnect()
        return [name for name, differs in (
            ("cpu", self.cpu != default.cpu),
            ("memory", memory_bytes(self.memory) != memory_bytes(default.memory)),
            ("conf", bool(self.conf)),
            ("nodeSelector", bool(self.node_selector)),
            ("tolerations", bool(self.tolerations))) if differs]


# Spark's GPU asks of tasks and executors (spark.task.resource.gpu.amount, ...).
GPU_AMOUNT = re.compile(r"spark\.(?:task|executor|driver)\.resource\.gpu\.amount")


def positive(value: str) -> bool:
    try:
        return float(value) > 0
    except ValueError:
        return True  # not a number: Spark refuses it, and it is no "0"


_SPARK_BYTES = re.compile(r"([0-9]{1,30})([a-z]*)")
_SPARK_UNITS = {"b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30,
                "gb": 2**30, "t": 2**40, "tb": 2**40, "p": 2**50, "pb": 2**50}


def spark_bytes(value: str, default_unit: str = "m") -> int | None:
    """Bytes in a Spark size (``spark.executor.memory``: 4g, 512m, 2048 MiB when bare), as
    Spark's JavaUtils reads it; None when Spark would not read it (Spark refuses it itself)."""
    m = _SPARK_BYTES.fullmatch(value.strip().lower())
    if not m or (m.group(2) or default_unit) not in _SPARK_UNITS:
        return None
    return int(m.group(1)) * _SPARK_UNITS[m.group(2) or default_unit]


_CORES = re.compile(r"0*[1-9][0-9]*")  # ASCII: str.isdigit() takes '²', which int() refuses


def whole_cores(text: str) -> int | None:
    """``text`` as a whole number of cores of 1 or more (Spark's ``spark.executor.cores``), or
    None: the one rule the executor checks read cores by."""
    return int(text) if _CORES.fullmatch(text.strip()) else None


class WorkerSize(NamedTuple):
    """One Spark worker, as ``executor_problems`` measures it: a spec's ``workers``, or the
    "workers" node group of a cluster's handle."""

    cores: int
    memory_bytes: int
    memory: str
    """As shown in a problem: a spec's ``workers.memory``."""
    gpus: int = 0


def executor_problems(conf: Mapping[str, str], worker: WorkerSize) -> list[tuple[str, str]]:
    """The keys of ``conf`` (an application's Spark settings, its executors sized to a worker by
    default: ``backends.base.executor_size``) that Spark refuses, or whose executors a
    standalone master never places on ``worker``, with why: the application would wait for
    executors for ever. The one rule for a spec's conf (said before its cluster is made, where
    the Connect server's SparkContext would fail) and a spark-submit application's (said before
    it is submitted: ``jobs.spark_jobs.check_executors_fit``)."""
    problems: list[tuple[str, str]] = []

    def cores_of(key: str) -> int | None:
        """``conf[key]`` as a whole number of cores; None when unset or refused."""
        text = conf.get(key)
        if text is None:
            return None
        if (cores := whole_cores(text)) is not None:
            return cores
        problems.append((key, f"{text!r} is not a whole number of cores of 1 or more"))
        return None

    executor_cores = worker.cores
    if (cores := cores_of("spark.executor.cores")) is not None:
        if cores > worker.cores:
            problems.append(("spark.executor.cores",
                             f"{cores} is more than a worker has (workers.cores: "
                             f"{worker.cores}): no executor could start; ask for at most that, "
                             "or give the workers more cores"))
        else:
            executor_cores = cores
    if (task_cpus := cores_of("spark.task.cpus")) is not None and task_cpus > executor_cores:
        problems.append(("spark.task.cpus",
                         f"{task_cpus} is more than an executor has ({executor_cores}; "
                         "spark.executor.cores, else workers.cores): Spark refuses it and no "
                         "task could run; ask for at most that"))
    # The master starts an executor only while the application has an executor's cores left.
    if (most := cores_of("spark.cores.max")) is not None and most < executor_cores:
        problems.append(("spark.cores.max",
                         f"{most} is fewer than one executor's cores ({executor_cores}; "
                         "spark.executor.cores, else workers.cores): no executor could start; "
                         "ask for at least that, or for executors of fewer cores"))
    if (text := conf.get("spark.executor.memory")) is not None:
        memory = spark_bytes(text)
        if memory is None:
            problems.append(("spark.executor.memory",
                             f"{text!r} is no size Spark reads: a whole number with k, m, g or "
                             "t (4g, 512m; not Kubernetes' Gi, nor fractions)"))
        elif memory > worker.memory_bytes:
            problems.append(("spark.executor.memory",
                             f"{text} is more than a worker has (workers.memory: "
                             f"{worker.memory}): no executor could start; ask for less, or "
                             "give the workers more memory"))
    executor_gpus: float = worker.gpus
    if (text := conf.get("spark.executor.resource.gpu.amount")) is not None:
        try:  # (not a number: Spark refuses it itself)
            asked: float | None = float(text)
        except ValueError:
            asked = None
        if asked is not None and asked > worker.gpus:
            problems.append(("spark.executor.resource.gpu.amount",
                             f"{text} is more than a worker has (workers.gpus: {worker.gpus}): "
                             "no executor could start; ask for at most that, or give the "
                             "workers GPUs"))
        elif asked is not None:
            executor_gpus = asked
    task_gpus = conf.get("spark.task.resource.gpu.amount", "")
    try:  # (not a number: Spark refuses it itself)
        too_many = bool(executor_gpus) and float(task_gpus) > executor_gpus
    except ValueError:
        too_many = False
    if too_many:
        has = (f"{executor_gpus:g}; spark.executor.resource.gpu.amount, else workers.gpus"
               if "spark.executor.resource.gpu.amount" in conf else
               f"workers.gpus: {worker.gpus}")
        problems.append(("spark.task.resource.gpu.amount",
                         f"{task_gpus} is more than an executor has ({has}): Spark refuses it; "
                         "ask for at most that"))
    return problems


# The validation context of an effective spec (a spec file after a profile or overrides,
# ``resolve.apply_profile``): what the caller chose there, not what the file says.
EFFECTIVE = "effective"


def _field_errors(code: str, problems: list[tuple[tuple[str, ...], str]]) -> Exception:
    """A model validator's problems as one ValidationError, each keeping its own field path
    (a plain ValueError would name the model's root)."""
    from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

    return ValidationError.from_exception_data("SparkCluster", [
        InitErrorDetails(type=PydanticCustomError(code, msg), loc=loc, input=None)
        for loc, msg in problems])


class SparkSpec(SpecBase):
    kind: Literal["SparkCluster"]
    """SparkCluster."""
    spark_version: str
    """The Spark version the cluster runs (the local backend's installed pyspark must be it)."""
    master: SparkMaster = Field(default_factory=SparkMaster)
    """The standalone master (not in operator mode)."""
    workers: SparkWorkers
    """The workers and what their executors get."""
    connect: SparkConnect | None = None
    """The Spark Connect server; absent: none."""
    conf: SparkConf = Field(default_factory=dict)
    """Spark settings (spark.* keys) every application of the cluster gets; never secrets."""
    kubernetes_mode: Literal["standalone", "operator"] | None = None
    """Kubernetes only: ``standalone`` (master, worker and Connect Deployments) or ``operator``
    (the Kubeflow spark-operator's ``SparkConnect``: executors as pods on demand, no master);
    unset, the deployment's ``EPHEMERAL_K8S_SPARK_MODE``. The local backend runs standalone."""

    @field_validator("spark_version", mode="before")
    @classmethod
    def _ver(cls, v: object) -> str:
        return _engine_version(v)

    @field_validator("conf")
    @classmethod
    def _conf_keys(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not k.startswith("spark.")]
        if bad:
            raise ValueError(f"Spark conf keys start with 'spark.'; got {', '.join(bad)}")
        return v

    def confs(self) -> list[tuple[str, dict[str, str]]]:
        """The spec's own Spark settings by their path: ``conf`` and ``connect.conf``."""
        return [("conf", self.conf), ("connect.conf", self.connect.conf if self.connect else {})]

    @model_validator(mode="after")
    def _executors_fit_workers(self) -> SparkSpec:
        """An executor with more cores, memory or GPUs than a worker has is never placed, nor
        one with more cores than spark.cores.max leaves: the application waits for ever
        (several smaller executors per worker are fine). Judged in
        conf (every application's) and, for the Connect server, conf with connect.conf over it
        (what it gets: executor cores from one, task cpus from the other), each problem under
        the path of what is wrong, once."""
        problems = self._executor_problems(("conf",), self.conf)
        if self.connect and self.connect.conf:
            said = {loc[-1] for loc, _ in problems}
            problems += [(("connect", "conf", loc[-1]), why) for loc, why in
                         self._executor_problems(("connect", "conf"),
                                                 {**self.conf, **self.connect.conf})
                         if loc[-1] in self.connect.conf or loc[-1] not in said]
        if problems:
            raise _field_errors("executor_too_big", problems)
        return self

    def _executor_problems(self, where: tuple[str, ...], conf: dict[str, str]
                           ) -> list[tuple[tuple[str, ...], str]]:
        """``executor_problems`` of ``conf`` on this spec's workers, under ``where``."""
        w = self.workers
        worker = WorkerSize(cores=w.cores, memory_bytes=memory_bytes(w.memory), memory=w.memory,
                            gpus=w.gpus)
        return [((*where, key), why) for key, why in executor_problems(conf, worker)]

    @model_validator(mode="after")
    def _gpu_tasks_need_gpu_workers(self) -> SparkSpec:
        """A task or executor that asks for GPUs on workers with none is never scheduled (Spark
        refuses the resource profile, or waits for ever): refused here, where a profile or an
        override that set ``workers.gpus`` to 0 is also judged."""
        if self.workers.gpus:
            return self
        msg = ("asks for GPUs but workers.gpus is 0: set it to \"0\" (or remove it) for a "
               "cluster without GPUs, or give the workers gpus")
        if asks := [(*where, "conf", key) for where, conf in
                    (((), self.conf), (("connect",), self.connect.conf if self.connect else {}))
                    for key, value in conf.items()
                    if GPU_AMOUNT.fullmatch(key) and positive(value)]:
            raise _field_errors("gpu_without_gpus", [(loc, msg) for loc in asks])
        return self

    @model_validator(mode="after")
    def _connect_off_sets_nothing(self, info: ValidationInfo) -> SparkSpec:
        """A spec file that turns its Connect server off yet sizes, configures or places it:
        no backend builds the server, so those fields would do nothing. A profile or the
        ``connect`` override that turns a customised server off is the caller's choice at run
        time, not the file's: such an effective spec (validated with ``EFFECTIVE``) keeps the
        fields, so turning the server back on restores the spec, and is noted instead
        (``backends.notes``)."""
        if self.connect is None or self.connect.enabled or (info.context or {}).get(EFFECTIVE):
            return self
        if names := self.connect.customised():
            raise _field_errors("connect_disabled", [
                (("connect", name), f"connect.enabled is false, so no Connect server runs and "
                 f"connect.{name} would do nothing: remove connect.{name}, or set "
                 "connect.enabled: true") for name in names])
        return self

    @model_validator(mode="after")
    def _operator_mode(self) -> SparkSpec:
        """A spec that chooses operator mode sets nothing that mode cannot honour; the rule is
        ``render.spark_operator.unhonoured`` (the renderer applies it when the deployment
        chooses). Raised as a ValidationError so each problem keeps its own field path."""
        if self.kubernetes_mode != "operator":
            return self
        from ephemeral.backends.kubernetes.render.spark_operator import unhonoured

        if problems := unhonoured(self):
            raise _field_errors("operator_mode", [(tuple(path.split(".")), msg)
                                                  for path, msg in problems])
        return self

    @property
    def engine(self) -> Literal["spark"]:
        return "spark"


ClusterSpec = Annotated[RaySpec | SparkSpec, Field(discriminator="kind")]

__all__ = ["ClusterSpec", "RaySpec", "SparkSpec", "memory_bytes"]
