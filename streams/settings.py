"""Every knob of ledgerflow: one settings object read from `LEDGERFLOW_*` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from connectors.stripe.versions import CURRENT_VERSION as CURRENT_STRIPE_VERSION

ALL_STAGES = ("ingest", "core", "sink")

NetSuiteSecret = Literal["consumer_key", "consumer_secret", "token_id", "token_secret"]
"""The TBA credentials, each from `LEDGERFLOW_NETSUITE_<NAME>` or `LEDGERFLOW_NETSUITE_<NAME>_FILE`."""


BC_API_HOST = "https://api.businesscentral.dynamics.com"
"""Business Central online's API host (every tenant's)."""


class Settings(BaseSettings):
    """Defaults suit `ledgerflow dev` on one machine; the docstring of each field names its
    variable. The k8s ConfigMap uses the same names."""

    model_config = SettingsConfigDict(env_prefix="LEDGERFLOW_", frozen=True, extra="ignore")

    kafka_bootstrap: str | None = None
    """LEDGERFLOW_KAFKA_BOOTSTRAP: broker list `host:port,…`. Unset in `ledgerflow dev` and the
    tests means "start the local broker"; a bare worker then uses 127.0.0.1:9092."""
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """LEDGERFLOW_KAFKA_SECURITY_PROTOCOL"""
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """LEDGERFLOW_KAFKA_SASL_MECHANISM"""
    kafka_sasl_username: str | None = None
    """LEDGERFLOW_KAFKA_SASL_USERNAME"""
    kafka_sasl_password: SecretStr | None = None
    """LEDGERFLOW_KAFKA_SASL_PASSWORD"""
    kafka_ssl_cafile: Path | None = None
    """LEDGERFLOW_KAFKA_SSL_CAFILE"""
    partitions: int = Field(default=8, ge=1, le=1024)
    """LEDGERFLOW_PARTITIONS: partitions of the topics ledgerflow creates."""
    replication_factor: int = Field(default=1, ge=1)
    """LEDGERFLOW_REPLICATION_FACTOR: of the topics ledgerflow creates (3 on a real cluster)."""
    processing_guarantee: Literal["exactly_once", "at_least_once"] = "at_least_once"
    """LEDGERFLOW_PROCESSING_GUARANTEE: Faust's guarantee for the stream stages. `exactly_once`
    is off by default: faust-streaming picks the transactional producer by the *destination*
    partition, so a send to a topic no local agent consumes (erp.commands, the DLQ) fails.
    Duplicates from at-least-once delivery are absorbed by the tables' event-id dedup and the
    commands' idempotency keys (see docs/delivery-guarantees.md)."""

    app_id: str = "ledgerflow"
    """LEDGERFLOW_APP_ID: Kafka consumer group and prefix of the changelog topics."""
    topic_prefix: str = ""
    """LEDGERFLOW_TOPIC_PREFIX: prepended to every topic name (isolates test runs)."""

    web_port: int = Field(default=6066, ge=0, le=65535)
    """LEDGERFLOW_WEB_PORT: the worker's web server (views, webhooks, metrics)."""
    web_host: str = "127.0.0.1"
    """LEDGERFLOW_WEB_HOST: the address peers use to reach this worker (table_route)."""
    web_bind: str = "127.0.0.1"
    """LEDGERFLOW_WEB_BIND: interface the web server listens on (0.0.0.0 in a pod)."""
    data_dir: Path = Path(".ledgerflow-data")
    """LEDGERFLOW_DATA_DIR: RocksDB tables and local state."""

    api_token: SecretStr | None = None
    """LEDGERFLOW_API_TOKEN: bearer token for operator and data routes."""
    stripe_webhook_secret: SecretStr | None = None
    """LEDGERFLOW_STRIPE_WEBHOOK_SECRET: one or more `whsec_…`, comma-separated (secret roll)."""
    stripe_api_key: SecretStr | None = None
    """LEDGERFLOW_STRIPE_API_KEY: a Stripe secret or restricted key (`rk_live_…`) for
    `ledgerflow backfill stripe` and `ledgerflow catch-up stripe`; read access to customers,
    subscriptions, invoices, credit notes, payment intents, charges and events is enough."""
    stripe_api_version: str = Field(default=CURRENT_STRIPE_VERSION, pattern=r"^\d{4}-\d{2}-\d{2}\.[a-z]+$")
    """LEDGERFLOW_STRIPE_API_VERSION: the `Stripe-Version` every API request is pinned to (the
    objects read come in its shape; the SDK's own default moves with each release). The default
    is the version stripe-mock v0.203.0 speaks."""
    stripe_api_base: str = "https://api.stripe.com"
    """LEDGERFLOW_STRIPE_API_BASE: Stripe's API host (a stand-in on loopback in tests and demos)."""
    stripe_requests_per_s: float = Field(default=20.0, gt=0, le=100)
    """LEDGERFLOW_STRIPE_REQUESTS_PER_S: the client's pace per endpoint, under Stripe's limit
    (25/s per endpoint in test mode, the default endpoint limit in live mode too); a 429 is
    still waited out with backoff."""
    stripe_lookup_after_s: float = Field(default=60.0, ge=0)
    """LEDGERFLOW_STRIPE_LOOKUP_AFTER_S: with an API key, how long an invoice payment waits for
    its invoice's Event before stage 1 reads the invoice from Stripe to learn its customer."""
    stripe_read_timeout_s: float = Field(default=10.0, gt=0)
    """LEDGERFLOW_STRIPE_READ_TIMEOUT_S: how long stage 1 waits for a Stripe read it makes while
    taking an Event in (a paginated invoice read whole, the invoice payments of a
    2025-03-31/04-30.basil paid invoice); past it the Event is dead-lettered, replayable, and for
    30 s the next such reads are not tried: a slow Stripe costs a batch one timeout."""
    relay_secret: SecretStr | None = None
    """LEDGERFLOW_RELAY_SECRET: HMAC secret of the Salesforce and CLM relays."""

    erp_base_url: str = "http://127.0.0.1:8089"
    """LEDGERFLOW_ERP_BASE_URL: the ERP the sink posts to. Unset with LEDGERFLOW_NETSUITE_ACCOUNT
    set, it is that account's REST host (`https://1234567-sb1.suitetalk.api.netsuite.com`); set,
    it overrides the host (a stand-in on loopback) and the TBA realm still comes from the account."""
    erp_mode: Literal["netsuite", "business-central"] = "netsuite"
    """LEDGERFLOW_ERP_MODE: the ERP's API, `netsuite` (SuiteTalk REST) or `business-central`
    (Business Central API v2.0)."""
    erp_token: SecretStr | None = None
    """LEDGERFLOW_ERP_TOKEN"""
    erp_concurrency: int = Field(default=5, ge=1, le=100)
    """LEDGERFLOW_ERP_CONCURRENCY: parallel ERP calls across customers (NetSuite's smallest
    shared limit is 5)."""
    erp_token_url: str | None = None
    """LEDGERFLOW_ERP_TOKEN_URL: OAuth 2.0 client-credentials endpoint; with it the sink fetches
    and refreshes its bearer token instead of using LEDGERFLOW_ERP_TOKEN."""
    erp_client_id: str | None = None
    """LEDGERFLOW_ERP_CLIENT_ID: OAuth 2.0 client id (with LEDGERFLOW_ERP_TOKEN_URL)."""
    erp_client_secret: SecretStr | None = None
    """LEDGERFLOW_ERP_CLIENT_SECRET: OAuth 2.0 client secret (with LEDGERFLOW_ERP_TOKEN_URL)."""
    bc_tenant: str | None = None
    """LEDGERFLOW_BC_TENANT: the Microsoft Entra tenant (its id or domain) of the Business
    Central environment; with it, an unset LEDGERFLOW_ERP_BASE_URL is Business Central's API
    host, `https://api.businesscentral.dynamics.com`."""
    bc_environment: str = "production"
    """LEDGERFLOW_BC_ENVIRONMENT: the Business Central environment's name (`production`, a
    sandbox's name): the API root is `<host>/v2.0/<tenant>/<environment>/api/v2.0`."""
    bc_payment_sign: Literal["negative", "positive"] = "negative"
    """LEDGERFLOW_BC_PAYMENT_SIGN: the sign of a customer payment journal line's amount. A receipt
    is a credit (negative) in Business Central's data model; Microsoft's API example sends a
    positive amount. Check one payment in a sandbox company before going live."""
    bc_batch: bool = True
    """LEDGERFLOW_BC_BATCH: the sink's calls to Business Central travel as operations of shared
    `$batch` requests (up to 100 each, from many customers at once) instead of one request
    each; LEDGERFLOW_ERP_CONCURRENCY then counts requests in flight. Off: a request per call."""
    bc_batch_linger_ms: float = Field(default=5.0, ge=0, le=1000)
    """LEDGERFLOW_BC_BATCH_LINGER_MS: how long a `$batch` waits for other customers' calls before
    it goes (while every request slot is busy it waits anyway, and fills)."""
    bc_operation_timeout_s: float = Field(default=1.0, ge=0)
    """LEDGERFLOW_BC_OPERATION_TIMEOUT_S: what each operation of a `$batch` adds to
    LEDGERFLOW_ERP_TIMEOUT_S for that request (Business Central runs them one after another)."""
    bc_certificate_file: Path | None = None
    """LEDGERFLOW_BC_CERTIFICATE_FILE: a PEM file with the certificate uploaded to the Entra app
    registration and its unencrypted private key; with it the app authenticates by certificate
    instead of LEDGERFLOW_ERP_CLIENT_SECRET. In Business Central mode LEDGERFLOW_ERP_CLIENT_ID
    (the app's client id) turns Entra ID client credentials on; without it the fixed
    LEDGERFLOW_ERP_TOKEN is sent (the stand-in)."""
    entra_authority: str = "https://login.microsoftonline.com"
    """LEDGERFLOW_ENTRA_AUTHORITY: the Microsoft Entra authority host (a national cloud's, or the
    stand-in's TLS port); the tenant is LEDGERFLOW_BC_TENANT."""
    entra_ca_bundle: Path | None = None
    """LEDGERFLOW_ENTRA_CA_BUNDLE: a CA bundle to verify the authority's TLS certificate with (a
    TLS-inspecting proxy's, or the stand-in's self-signed one); unset, the system's."""
    netsuite_account: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]+([_-][A-Za-z0-9]+)*$")
    """LEDGERFLOW_NETSUITE_ACCOUNT: the NetSuite account id, in either form (`1234567_SB1` or
    `1234567-sb1`): the REST host uses the lower/dash form, the TBA realm the upper/underscore
    form, and the M2M token URL the host."""
    netsuite_auth: Literal["token", "tba", "m2m"] = "token"
    """LEDGERFLOW_NETSUITE_AUTH: how the sink authenticates to the ERP. `token`: a bearer token,
    fixed (LEDGERFLOW_ERP_TOKEN) or from an OAuth 2.0 client-credentials endpoint
    (LEDGERFLOW_ERP_TOKEN_URL). `tba`: NetSuite token-based auth (OAuth 1.0a, HMAC-SHA256), each
    request signed with LEDGERFLOW_NETSUITE_CONSUMER_KEY/_SECRET and _TOKEN_ID/_TOKEN_SECRET.
    `m2m`: NetSuite OAuth 2.0 client credentials with a JWT assertion signed by
    LEDGERFLOW_NETSUITE_PRIVATE_KEY_FILE (LEDGERFLOW_NETSUITE_CLIENT_ID, _CERTIFICATE_ID)."""
    netsuite_consumer_key: SecretStr | None = None
    """LEDGERFLOW_NETSUITE_CONSUMER_KEY: TBA consumer key of the integration record. Each TBA
    credential may instead be read from a file (a mounted secret) named by the same variable with
    `_FILE` appended, here LEDGERFLOW_NETSUITE_CONSUMER_KEY_FILE; surrounding whitespace is dropped.
    Setting both is refused."""
    netsuite_consumer_key_file: Path | None = None
    """LEDGERFLOW_NETSUITE_CONSUMER_KEY_FILE"""
    netsuite_consumer_secret: SecretStr | None = None
    """LEDGERFLOW_NETSUITE_CONSUMER_SECRET: TBA consumer secret (or its _FILE)."""
    netsuite_consumer_secret_file: Path | None = None
    """LEDGERFLOW_NETSUITE_CONSUMER_SECRET_FILE"""
    netsuite_token_id: SecretStr | None = None
    """LEDGERFLOW_NETSUITE_TOKEN_ID: TBA access token id (or its _FILE)."""
    netsuite_token_id_file: Path | None = None
    """LEDGERFLOW_NETSUITE_TOKEN_ID_FILE"""
    netsuite_token_secret: SecretStr | None = None
    """LEDGERFLOW_NETSUITE_TOKEN_SECRET: TBA access token secret (or its _FILE)."""
    netsuite_token_secret_file: Path | None = None
    """LEDGERFLOW_NETSUITE_TOKEN_SECRET_FILE"""
    netsuite_client_id: str | None = None
    """LEDGERFLOW_NETSUITE_CLIENT_ID: M2M integration client id (the assertion's `iss`)."""
    netsuite_certificate_id: str | None = None
    """LEDGERFLOW_NETSUITE_CERTIFICATE_ID: the id NetSuite showed when the M2M certificate was
    mapped (the assertion's `kid`)."""
    netsuite_private_key_file: Path | None = None
    """LEDGERFLOW_NETSUITE_PRIVATE_KEY_FILE: PEM private key (RSA 3072/4096 → PS256, EC P-256 →
    ES256) of the mapped certificate, unencrypted; read at each token fetch, so a rotated file is
    picked up. The key itself never goes in a variable."""
    netsuite_token_url: str | None = None
    """LEDGERFLOW_NETSUITE_TOKEN_URL: the M2M token endpoint; unset, it is
    `<LEDGERFLOW_ERP_BASE_URL>/services/rest/auth/oauth2/v1/token` (the account host, or the
    override)."""
    erp_timeout_s: float = Field(default=10.0, gt=0)
    """LEDGERFLOW_ERP_TIMEOUT_S: one ERP request's timeout; past it the outcome is uncertain
    and the next attempt looks before it writes."""
    erp_max_attempts: int = Field(default=8, ge=1)
    """LEDGERFLOW_ERP_MAX_ATTEMPTS: attempts per command before its customer's lane is parked."""
    erp_retry_max_s: float = Field(default=60.0, gt=0)
    """LEDGERFLOW_ERP_RETRY_MAX_S: longest one command is retried (backoff with jitter,
    honouring Retry-After) before its customer's lane is parked as an `erp_unavailable`
    exception; other customers go on meanwhile."""
    erp_retry_base_s: float = Field(default=0.2, gt=0)
    """LEDGERFLOW_ERP_RETRY_BASE_S: first backoff step (doubling, full jitter)."""
    erp_park_retry_s: float = Field(default=30.0, gt=0)
    """LEDGERFLOW_ERP_PARK_RETRY_S: how often a parked customer's blocked command is tried again."""
    erp_breaker_failures: int = Field(default=10, ge=1)
    """LEDGERFLOW_ERP_BREAKER_FAILURES: consecutive transient failures that open the circuit
    breaker (the sink then stops calling the ERP and probes it)."""
    erp_breaker_open_s: float = Field(default=5.0, gt=0)
    """LEDGERFLOW_ERP_BREAKER_OPEN_S: how long the breaker stays open before one probe."""
    reconcile_interval_s: float = 3600.0
    """LEDGERFLOW_RECONCILE_INTERVAL_S: how often the leader worker reconciles what ledgerflow
    posted with what the ERP holds (as `ledgerflow reconcile` does) and raises each difference
    as a `reconciliation_difference` exception; 0 or negative turns the schedule off."""

    crm_base_url: str | None = None
    """LEDGERFLOW_CRM_BASE_URL: the Salesforce instance (`https://<my-domain>.my.salesforce.com`)
    that ERP ids and payment status are written back to. Unset disables the write-back: the
    agent still consumes `crm.writeback` and drops what it reads."""
    crm_api_version: str = Field(default="v60.0", pattern=r"^v\d+\.\d$")
    """LEDGERFLOW_CRM_API_VERSION: Salesforce REST API version of the write-back calls."""
    crm_token: SecretStr | None = None
    """LEDGERFLOW_CRM_TOKEN: a fixed bearer token for the CRM (when no token URL is set)."""
    crm_token_url: str | None = None
    """LEDGERFLOW_CRM_TOKEN_URL: OAuth 2.0 client-credentials endpoint
    (`https://<my-domain>.my.salesforce.com/services/oauth2/token`); with it the write-back
    fetches and refreshes its token instead of using LEDGERFLOW_CRM_TOKEN."""
    crm_client_id: str | None = None
    """LEDGERFLOW_CRM_CLIENT_ID: the external client app's consumer key (with the token URL)."""
    crm_client_secret: SecretStr | None = None
    """LEDGERFLOW_CRM_CLIENT_SECRET: the external client app's consumer secret."""
    crm_timeout_s: float = Field(default=10.0, gt=0)
    """LEDGERFLOW_CRM_TIMEOUT_S: one CRM request's timeout."""
    crm_max_attempts: int = Field(default=6, ge=1)
    """LEDGERFLOW_CRM_MAX_ATTEMPTS: attempts per account update before it is raised as a
    `crm_writeback_failed` exception (replayable)."""
    crm_retry_max_s: float = Field(default=60.0, gt=0)
    """LEDGERFLOW_CRM_RETRY_MAX_S: longest one account update is retried (backoff with jitter)."""
    crm_breaker_failures: int = Field(default=5, ge=1)
    """LEDGERFLOW_CRM_BREAKER_FAILURES: consecutive transient failures that stop CRM calls."""
    crm_breaker_open_s: float = Field(default=10.0, gt=0)
    """LEDGERFLOW_CRM_BREAKER_OPEN_S: how long CRM calls stay stopped before one probe."""
    crm_concurrency: int = Field(default=4, ge=1, le=25)
    """LEDGERFLOW_CRM_CONCURRENCY: parallel CRM calls (Salesforce counts concurrent requests
    per org, shared with every other integration)."""

    salesforce_pubsub_endpoint: str = "api.pubsub.salesforce.com:7443"
    """LEDGERFLOW_SALESFORCE_PUBSUB_ENDPOINT: the Pub/Sub API's `host:port` that
    `ledgerflow salesforce-subscribe` reads Change Data Capture from (EU orgs:
    `api.deu.pubsub.salesforce.com:7443`)."""
    salesforce_pubsub_insecure: bool = False
    """LEDGERFLOW_SALESFORCE_PUBSUB_INSECURE: plaintext gRPC, for a stand-in on loopback only
    (TLS, with the system's CA bundle, otherwise)."""
    salesforce_pubsub_channels: str = Field(
        default="/data/AccountChangeEvent", pattern=r"^/[^,\s]+(,/[^,\s]+)*$"
    )
    """LEDGERFLOW_SALESFORCE_PUBSUB_CHANNELS: comma-separated CDC channels, one subscription
    (and one transactional producer) each: `/data/AccountChangeEvent,/data/ContactChangeEvent`,
    or `/data/ChangeEvents` for every selected entity."""
    salesforce_pubsub_batch_size: int = Field(default=100, ge=1, le=100)
    """LEDGERFLOW_SALESFORCE_PUBSUB_BATCH_SIZE: `num_requested` of each FetchRequest (at most
    100, the API's cap)."""
    salesforce_pubsub_replay_preset: Literal["EARLIEST", "LATEST"] = "LATEST"
    """LEDGERFLOW_SALESFORCE_PUBSUB_REPLAY_PRESET: where a channel with no checkpoint on
    `ledgerflow.salesforce-replay` starts: EARLIEST (everything retained, 72 h) or LATEST."""
    salesforce_pubsub_max_retries: int = Field(default=5, ge=0)
    """LEDGERFLOW_SALESFORCE_PUBSUB_MAX_RETRIES: consecutive failed subscriptions (backoff 1 s,
    2 s, 4 s … ≤ 30 s) before the command exits non-zero for its supervisor to restart."""
    salesforce_login_url: str | None = None
    """LEDGERFLOW_SALESFORCE_LOGIN_URL: where the subscriber gets its token and org id: the My
    Domain URL (`https://<domain>.my.salesforce.com`; client credentials need it) or the login
    host for the JWT grant. Unset: LEDGERFLOW_CRM_BASE_URL. The app's key and secret are
    LEDGERFLOW_CRM_CLIENT_ID and LEDGERFLOW_CRM_CLIENT_SECRET."""
    salesforce_jwt_username: str | None = None
    """LEDGERFLOW_SALESFORCE_JWT_USERNAME: with a private key, use the JWT bearer grant as this
    (pre-authorised) user instead of client credentials."""
    salesforce_jwt_private_key_file: Path | None = None
    """LEDGERFLOW_SALESFORCE_JWT_PRIVATE_KEY_FILE: PEM RSA key of the JWT grant (RS256); its
    certificate is uploaded to the External Client App."""
    salesforce_jwt_audience: str | None = None
    """LEDGERFLOW_SALESFORCE_JWT_AUDIENCE: the assertion's `aud` (default: the login URL;
    `https://login.salesforce.com`, `https://test.salesforce.com` or the My Domain URL)."""

    mappings: Path | None = None
    """LEDGERFLOW_MAPPINGS: path of the mappings TOML; unset uses the bundled example."""
    crm_account_metadata_key: str = "crm_account_id"
    """LEDGERFLOW_CRM_ACCOUNT_METADATA_KEY: Stripe customer metadata key naming the CRM account."""

    stages: str = Field(default="ingest,core,sink", pattern=r"^(ingest|core|sink)(,(ingest|core|sink))*$")
    """LEDGERFLOW_STAGES: which stages this worker runs (`ledgerflow worker --stages ingest,core`
    sets it): to scale or isolate the sink, say. Such a worker joins the consumer group
    `<app id>-<stages>` (see `group_id`). Every worker serves the web routes; the data views
    answer from the tables of the worker's own stages."""
    session_timeout_s: float = Field(default=10.0, gt=0)
    """LEDGERFLOW_SESSION_TIMEOUT_S: how long the group waits for a silent worker before its
    partitions move (Faust's default is 60 s; a crashed pod's partitions stall that long)."""
    rocksdb_write_buffer_mb: int = Field(default=4, ge=1, le=1024)
    """LEDGERFLOW_ROCKSDB_WRITE_BUFFER_MB: the memtable of each table store (one store per table
    and partition; at most two memtables each). Faust's default, three 64 MB memtables per store, kept a
    worker's whole state in memory: 751 MB at 60,000 customers (bench/state_rss.py)."""
    rocksdb_memtables_mb: int = Field(default=64, ge=1, le=65536)
    """LEDGERFLOW_ROCKSDB_MEMTABLES_MB: all memtables of a worker together (one RocksDB write
    buffer manager shared by every store): past it the fullest are flushed to disk."""
    rocksdb_block_cache_mb: int = Field(default=64, ge=1, le=65536)
    """LEDGERFLOW_ROCKSDB_BLOCK_CACHE_MB: the one block cache every table store of a worker
    shares, index and filter blocks included (Faust's default is a 2 GB cache per store,
    filled as rows are read). See streams/rocksdb.py."""
    standby_replicas: int = Field(default=0, ge=0, le=8)
    """LEDGERFLOW_STANDBY_REPLICAS: warm copies of every table partition kept by other workers
    (Faust's `table_standby_replicas`). With 1, the worker that takes over a lost worker's
    partitions already holds their tables and replays only the changelog's tail; 0 (one
    machine, `ledgerflow dev`) saves the second read of every changelog and its disk."""
    park_timeout_s: float = Field(default=3600.0, gt=0)
    """LEDGERFLOW_PARK_TIMEOUT_S: how long a billing event may wait for its customer's identity
    before it is raised as an `unknown_customer` exception (it stays parked, and is released
    when the customer arrives)."""

    batch_size: int = Field(default=500, ge=1)
    """LEDGERFLOW_BATCH_SIZE: events an agent takes at once (Faust's per-event cost is high)."""
    batch_window_ms: int = Field(default=10, ge=1)
    """LEDGERFLOW_BATCH_WINDOW_MS: longest an agent waits to fill a batch. Every hop waits for
    it after each batch (faust's take), so it is latency per hop; too short, batches shrink and
    their fixed costs take the CPU the hops wait for (5 ms was slower than 10 at 500 events/s)."""
    producer_linger_ms: int = Field(default=50, ge=0)
    """LEDGERFLOW_PRODUCER_LINGER_MS: how long the producer holds a send so that others join it
    in one request. An agent's batch does not wait for it: the batch's commit sends at once
    (`streams.publishing.expedite_sends`); what lingers is what nobody waits for, like table
    changelogs. Produce requests are costly here (one that wakes the broker ~50 µs CPU in the
    socket write): 5 ms → 50 ms took the bench from 370 to 462 events/s."""
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """LEDGERFLOW_EVENT_LOOP: the event loop of every `ledgerflow` process. uvloop (libuv) runs
    the loop's own work — socket writes, callbacks, the consumer thread's wake-ups — in C;
    under asyncio's loop that was a quarter to a third of each worker's CPU in the bench."""
    log_level: str = "info"
    """LEDGERFLOW_LOG_LEVEL"""
    log_format: Literal["json", "text"] = "text"
    """LEDGERFLOW_LOG_FORMAT: `json`, one JSON object per line (a pod's log shipper; the k8s
    base sets it), or `text`, `… [LEVEL] logger: message key=value …` for a terminal. Either
    way every line carries its fields (streams/logs.py), personal data and secrets redacted."""

    @model_validator(mode="before")
    @classmethod
    def _netsuite_base_url(cls, data: Any) -> Any:
        """The account's REST host as the ERP base URL, unless LEDGERFLOW_ERP_BASE_URL is given
        (in the environment or as an argument: both arrive here as keys of `data`)."""
        if isinstance(data, dict) and data.get("netsuite_account") and "erp_base_url" not in data:
            from connectors.erp.netsuite_auth import netsuite_base_url

            data = {**data, "erp_base_url": netsuite_base_url(str(data["netsuite_account"]))}
        if isinstance(data, dict) and data.get("bc_tenant") and "erp_base_url" not in data:
            data = {**data, "erp_base_url": BC_API_HOST}
        return data

    @model_validator(mode="after")
    def _one_source_per_secret(self) -> Settings:
        for name in ("consumer_key", "consumer_secret", "token_id", "token_secret"):
            if getattr(self, f"netsuite_{name}") is not None and getattr(self, f"netsuite_{name}_file"):
                variable = f"LEDGERFLOW_NETSUITE_{name.upper()}"
                raise ValueError(f"set {variable} or {variable}_FILE, not both")
        return self

    def netsuite_secret(self, name: NetSuiteSecret) -> SecretStr | None:
        """A TBA credential from its variable, or read from its `_FILE` (raises OSError when
        that file cannot be read). Read when the ERP connection is made, not at import."""
        value: SecretStr | None = getattr(self, f"netsuite_{name}")
        path: Path | None = getattr(self, f"netsuite_{name}_file")
        if value is not None or path is None:
            return value
        return SecretStr(path.read_text(encoding="utf-8").strip())

    @property
    def bc_api_root(self) -> str:
        """Business Central's API v2.0 root for the tenant and environment, on the ERP host."""
        if not self.bc_tenant:
            raise ValueError("LEDGERFLOW_ERP_MODE=business-central needs LEDGERFLOW_BC_TENANT")
        host = self.erp_base_url.rstrip("/")
        return f"{host}/v2.0/{self.bc_tenant}/{self.bc_environment}/api/v2.0"

    @property
    def netsuite_realm(self) -> str | None:
        """The TBA realm: the account id, upper case with underscores (`1234567_SB1`)."""
        if not self.netsuite_account:
            return None
        from connectors.erp.netsuite_auth import netsuite_realm

        return netsuite_realm(self.netsuite_account)

    @property
    def netsuite_token_endpoint(self) -> str:
        """The M2M token URL: LEDGERFLOW_NETSUITE_TOKEN_URL, else under the ERP base URL."""
        if self.netsuite_token_url:
            return self.netsuite_token_url
        from connectors.erp.netsuite_auth import netsuite_token_url

        return netsuite_token_url(self.erp_base_url)

    @property
    def group_id(self) -> str:
        """The consumer group (and changelog prefix) of this worker: LEDGERFLOW_APP_ID, with the
        stages appended when a worker runs only some, so each stage set is a group of its own
        whose members all consume the same topics and keep the same tables."""
        stages = self.stages.split(",")
        if sorted(stages) == sorted(ALL_STAGES):
            return self.app_id
        return "-".join([self.app_id, *[st for st in ALL_STAGES if st in stages]])

    @property
    def salesforce_channels(self) -> tuple[str, ...]:
        return tuple(self.salesforce_pubsub_channels.split(","))

    def topic(self, name: str) -> str:
        """The broker-side name of a design topic."""
        return f"{self.topic_prefix}{name}"

    @property
    def bootstrap(self) -> str:
        """The broker list the app connects to."""
        return self.kafka_bootstrap or "127.0.0.1:9092"


settings = Settings()
