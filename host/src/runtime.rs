//! The Wasm runtime: engine, limits, plugin loading, one instance per event.
//!
//! A [`Runtime`] owns one wasmtime engine with the pooling allocator and an
//! epoch ticker. [`Runtime::load`] compiles a component once per content
//! digest, checks it against the `event-handler` world and pre-instantiates
//! it into a [`Plugin`]. [`Runtime::dispatch`] runs one event on a fresh
//! instance of a plugin, under the handler's deadline, memory cap and
//! host-call budget, and always returns a [`Dispatch`]: a trap, a missed
//! deadline or an exceeded limit becomes a `retry` outcome with the fault
//! attached, never an error that could take the host down.
//!
//! A build may also register [`NativeHandler`]s ([`Runtime::with_natives`]):
//! handlers compiled into the host, named by a plugin file holding
//! `native:<name>`. They run under the same capabilities, grants, limits
//! and deadline, without the sandbox; they exist so a benchmark can weigh
//! the sandbox. The `switchyard` binary registers none and refuses them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tracing::instrument;
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};

use crate::bindings::event::Event;
use crate::bindings::outcome::Outcome as WitOutcome;
use crate::bindings::{EventHandler, EventHandlerPre};
use crate::capability::{Effects, HandlerEnv, HostCallLimitExceeded, HostState};
use crate::limits::Limits;
use crate::lock;

/// How often the engine's epoch advances; the granularity of deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Engine-wide settings, fixed when the [`Runtime`] is created.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Most instances alive at once across all handlers (pool slots).
    pub max_instances: u32,
    /// Upper bound for any handler's `memory_bytes`.
    pub max_memory_bytes: usize,
    /// Bytes of each pooled linear memory reset in place (only the pages
    /// an instance dirtied, found with `PAGEMAP_SCAN` where the kernel has
    /// it) instead of given back to the kernel, so the next instance in the
    /// slot takes no page faults on them. 0 gives every page back.
    pub keep_resident_bytes: usize,
}

/// Default [`RuntimeConfig::keep_resident_bytes`]: a Rust guest's stack
/// (1 MiB by default, at the bottom of its memory), data and first heap.
pub const KEEP_RESIDENT_BYTES: usize = 4 << 20;

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_instances: 128,
            max_memory_bytes: 1 << 30,
            keep_resident_bytes: KEEP_RESIDENT_BYTES,
        }
    }
}

/// Why a plugin was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read plugin {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "plugin {digest} is a core WebAssembly module, not a component: build it for wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule { digest: Digest },
    #[error("plugin {digest} is not a valid WebAssembly component: {reason}")]
    Compile { digest: Digest, reason: String },
    #[error("plugin {digest} does not fit the switchyard:handler/event-handler world: {reason}")]
    WrongWorld { digest: Digest, reason: String },
    #[error(
        "plugin {digest} names the native handler `{name}`, which this build does not have (native handlers exist only in benchmark builds)"
    )]
    UnknownNative { digest: Digest, name: String },
}

/// The first bytes of a plugin file that names a native handler.
pub const NATIVE_PREFIX: &[u8] = b"native:";

/// A handler compiled into the host. It reaches the world only through the
/// [`HostState`] it is given, exactly as a component does through its
/// imports, and returns the outcome a component would with the state, or
/// why it failed (a panic, say), which becomes a trap.
pub trait NativeHandler: Send + Sync + 'static {
    fn handle(&self, host: HostState, event: Event) -> NativeRun;
}

/// A native handler's run: its outcome and the state it was given back.
pub type NativeRun = Pin<Box<dyn Future<Output = Result<(WitOutcome, HostState), String>> + Send>>;

/// Native handlers by name.
pub type Natives = BTreeMap<String, Arc<dyn NativeHandler>>;

/// The SHA-256 of a plugin's bytes, which names a version of it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Digest(String);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for humans.
    pub fn short(&self) -> &str {
        let hex = self.0.trim_start_matches("sha256:");
        &hex[..hex.len().min(12)]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A compiled, checked, pre-instantiated plugin.
pub struct Plugin {
    digest: Digest,
    size: usize,
    code: Code,
}

/// What runs an event: a component, or a handler compiled in.
enum Code {
    Wasm(EventHandlerPre<HostState>),
    Native(Arc<dyn NativeHandler>),
}

impl Plugin {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Size of the component in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("digest", &self.digest)
            .field("size", &self.size)
            .finish()
    }
}

/// What the host does with an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledge: the handler's effects are complete.
    Ack,
    /// Redeliver later; `None` leaves the delay to the host's backoff.
    Retry {
        #[serde(rename = "retry_after_ms", with = "millis")]
        delay: Option<Duration>,
    },
    /// Dead-letter with this reason.
    Reject { reason: String },
}

mod millis {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(delay: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match delay {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }
}

impl Outcome {
    /// `ack`, `retry` or `reject`.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Ack => "ack",
            Outcome::Retry { .. } => "retry",
            Outcome::Reject { .. } => "reject",
        }
    }
}

impl From<WitOutcome> for Outcome {
    fn from(outcome: WitOutcome) -> Self {
        match outcome {
            WitOutcome::Ack => Outcome::Ack,
            WitOutcome::Retry(delay) => Outcome::Retry {
                delay: delay.map(Duration::from_millis),
            },
            WitOutcome::Reject(reason) => Outcome::Reject { reason },
        }
    }
}

/// Why an event did not run to a plugin-chosen outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "fault", content = "detail", rename_all = "snake_case")]
pub enum Fault {
    #[error("deadline of {0:?} exceeded")]
    Deadline(Duration),
    #[error("memory limit of {limit} bytes reached: {detail}")]
    Memory { limit: usize, detail: String },
    #[error("{0}")]
    HostCallLimit(String),
    /// A guest panic (Rust's `unreachable` after the panic hook ran), with
    /// the message when the guest's captured stderr holds one.
    #[error("guest panicked{}", .0.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Panic(Option<String>),
    /// wasmtime's `StackOverflow` trap: the guest used up its wasm stack.
    #[error("stack overflow")]
    StackOverflow,
    /// Any other trap, without its backtrace (which goes to the log).
    #[error("guest trapped: {0}")]
    Trap(String),
    #[error("could not instantiate plugin: {0}")]
    Instantiate(String),
}

impl Fault {
    /// A short name for metrics: `deadline`, `memory`, `host_call_limit`,
    /// `trap` (panics and stack overflows too) or `instantiate`.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Deadline(_) => "deadline",
            Fault::Memory { .. } => "memory",
            Fault::HostCallLimit(_) => "host_call_limit",
            Fault::Panic(_) | Fault::StackOverflow | Fault::Trap(_) => "trap",
            Fault::Instantiate(_) => "instantiate",
        }
    }
}

/// The result of running one event.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub outcome: Outcome,
    pub effects: Effects,
    /// Set when the host chose the outcome because the guest failed.
    pub fault: Option<Fault>,
    pub elapsed: Duration,
    /// How long it waited for a free instance slot before it started.
    pub waited: Duration,
    /// What the guest wrote to stdout/stderr (bounded), e.g. a panic message.
    pub output: String,
}

/// The wasmtime engine and everything shared by all plugins.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    config: RuntimeConfig,
    compiled: Mutex<HashMap<Digest, Component>>,
    /// One permit per pooled instance slot: a dispatch waits for a free
    /// slot instead of failing to instantiate when every slot is taken.
    slots: tokio::sync::Semaphore,
    ticker_stop: Arc<AtomicBool>,
    natives: Natives,
}

impl Runtime {
    /// Creates the engine and starts its epoch ticker.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        let slots = config.max_instances.max(1);
        pool.total_component_instances(slots)
            // A Rust component has a few core instances and tables besides
            // its one memory; leave room for them.
            .total_core_instances(slots.saturating_mul(8))
            .total_memories(slots.saturating_mul(2))
            .total_tables(slots.saturating_mul(8))
            .total_stacks(slots)
            .max_memory_size(config.max_memory_bytes)
            // Instances come and go once per event: reset what one dirtied
            // in place rather than fault it back in for the next.
            .linear_memory_keep_resident(config.keep_resident_bytes)
            .table_keep_resident(config.keep_resident_bytes.min(1 << 16))
            .pagemap_scan(if config.keep_resident_bytes > 0 {
                Enabled::Auto
            } else {
                Enabled::No
            });
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .wasm_component_model(true)
            .max_wasm_stack(1 << 20)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        EventHandler::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |state| {
            state
        })?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.weak();
        let stop = ticker_stop.clone();
        std::thread::Builder::new()
            .name("switchyard-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;

        Ok(Runtime {
            engine,
            linker,
            config,
            compiled: Mutex::new(HashMap::new()),
            slots: tokio::sync::Semaphore::new(slots as usize),
            ticker_stop,
            natives: Natives::new(),
        })
    }

    /// This runtime with `natives` registered, for `native:<name>` plugins.
    pub fn with_natives(mut self, natives: Natives) -> Self {
        self.natives = natives;
        self
    }

    /// How many distinct components have been compiled and kept.
    pub fn compiled_components(&self) -> usize {
        lock(&self.compiled).len()
    }

    /// Instance slots taken right now, of [`RuntimeConfig::max_instances`].
    pub fn instances_in_use(&self) -> usize {
        (self.config.max_instances.max(1) as usize).saturating_sub(self.slots.available_permits())
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Reads, compiles and checks a plugin file. CPU-heavy: call it off the
    /// async executor (e.g. in `spawn_blocking`).
    pub fn load_file(&self, path: &std::path::Path) -> Result<Arc<Plugin>, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.load(&bytes)
    }

    /// Compiles and checks a plugin. A digest compiled before is not
    /// compiled again. CPU-heavy: call it off the async executor.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<Plugin>, LoadError> {
        let digest = Digest::of(bytes);
        if let Some(name) = bytes.strip_prefix(NATIVE_PREFIX) {
            let name = String::from_utf8_lossy(name).trim().to_owned();
            let Some(native) = self.natives.get(&name) else {
                return Err(LoadError::UnknownNative { digest, name });
            };
            return Ok(Arc::new(Plugin {
                digest,
                size: bytes.len(),
                code: Code::Native(native.clone()),
            }));
        }
        let component = self.compile(&digest, bytes)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(EventHandlerPre::new)
            .map_err(|e| LoadError::WrongWorld {
                digest: digest.clone(),
                reason: one_line(&format!("{e:#}")),
            })?;
        Ok(Arc::new(Plugin {
            digest,
            size: bytes.len(),
            code: Code::Wasm(pre),
        }))
    }

    fn compile(&self, digest: &Digest, bytes: &[u8]) -> Result<Component, LoadError> {
        if let Some(component) = lock(&self.compiled).get(digest) {
            return Ok(component.clone());
        }
        // Version 1 of the binary format is a core module; components use a
        // different layer/version word.
        if bytes.starts_with(b"\0asm\x01\0\0\0") {
            return Err(LoadError::CoreModule {
                digest: digest.clone(),
            });
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| LoadError::Compile {
            digest: digest.clone(),
            reason: one_line(&format!("{e:#}")),
        })?;
        lock(&self.compiled).insert(digest.clone(), component.clone());
        Ok(component)
    }

    /// Runs `event` on a fresh instance of `plugin` with `env`'s backends
    /// and limits. Never fails: guest failures become a `retry` with a fault.
    #[instrument(
        name = "dispatch",
        skip_all,
        fields(
            handler = %env.name,
            plugin = %plugin.digest.short(),
            subject = %event.subject,
            sequence = event.stream_sequence,
            attempt = event.delivery_attempt,
        )
    )]
    pub async fn dispatch(&self, plugin: &Plugin, env: &Arc<HandlerEnv>, event: Event) -> Dispatch {
        // Held until the store, and with it the instance's slot, is dropped.
        // The semaphore is never closed.
        let queued = Instant::now();
        let _slot = self.slots.acquire().await.ok();
        let started = Instant::now();
        let waited = started - queued;
        let state = HostState::new(env.clone(), event.subject.clone(), event.stream_sequence);
        let output = state.output.clone();
        let (result, effects) = match &plugin.code {
            Code::Wasm(pre) => self.run_wasm(pre, state, &event, started).await,
            Code::Native(native) => run_native(native.as_ref(), state, event.clone()).await,
        };
        let output = String::from_utf8_lossy(&output.contents()).into_owned();

        let (outcome, fault) = match result {
            Ok(outcome) => (Outcome::from(outcome), None),
            Err(fault) => {
                tracing::warn!(%fault, guest_output = %output.trim_end(), "handler failed; the event will be retried");
                (Outcome::Retry { delay: None }, Some(fault))
            }
        };
        Dispatch {
            outcome,
            effects,
            fault,
            elapsed: started.elapsed(),
            waited,
            output,
        }
    }

    /// One event on a fresh instance of a component.
    async fn run_wasm(
        &self,
        pre: &EventHandlerPre<HostState>,
        state: HostState,
        event: &Event,
        started: Instant,
    ) -> (Result<WitOutcome, Fault>, Effects) {
        let limits = state.env.limits.clone();
        let output = state.output.clone();
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| state.limiter());

        // The callback runs every epoch tick while the guest executes: it
        // traps once the deadline has passed and otherwise yields, so a busy
        // guest does not hold an executor thread for the whole deadline.
        let deadline_at = started + limits.deadline;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline_at {
                Err(Trap::Interrupt.into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });

        let run = async {
            let instance = pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| Fault::Instantiate(format!("{e:#}")))?;
            instance
                .call_handle(&mut store, event)
                .await
                .map_err(|e| classify(&e, &limits, &output.contents()))
        };
        // The epoch only fires while guest code runs; this catches time
        // spent inside a host call that does not return.
        let result = match tokio::time::timeout(limits.deadline, run).await {
            Ok(result) => result,
            Err(_) => Err(Fault::Deadline(limits.deadline)),
        };
        (result, store.into_data().effects)
    }
}

/// One event on a handler compiled in, under the same deadline.
async fn run_native(
    native: &dyn NativeHandler,
    state: HostState,
    event: Event,
) -> (Result<WitOutcome, Fault>, Effects) {
    let deadline = state.env.limits.deadline;
    match tokio::time::timeout(deadline, native.handle(state, event)).await {
        Ok(Ok((outcome, state))) => (Ok(outcome), state.effects),
        Ok(Err(failure)) => (Err(Fault::Trap(failure)), Effects::default()),
        Err(_) => (Err(Fault::Deadline(deadline)), Effects::default()),
    }
}

/// The fault a failed call stands for. Its text is the cause alone, short
/// enough to be a dead letter's reason; a trap's wasm backtrace is logged
/// here instead. `output` is what the guest wrote to stdout/stderr, where a
/// Rust guest's panic hook leaves the message.
fn classify(error: &wasmtime::Error, limits: &Limits, output: &[u8]) -> Fault {
    if let Some(exceeded) = error.downcast_ref::<HostCallLimitExceeded>() {
        return Fault::HostCallLimit(exceeded.to_string());
    }
    let trap = error.downcast_ref::<Trap>();
    if let Some(Trap::Interrupt) = trap {
        return Fault::Deadline(limits.deadline);
    }
    let detail = format!("{error:#}");
    if detail.contains("forcing trap when growing memory") || detail.contains("memory.grow") {
        return Fault::Memory {
            limit: limits.memory_bytes,
            detail,
        };
    }
    let backtrace = error.downcast_ref::<wasmtime::WasmBacktrace>();
    tracing::warn!(
        trap = %detail,
        backtrace = %backtrace.map(|b| b.to_string()).unwrap_or_default(),
        "guest trapped"
    );
    match trap {
        Some(Trap::StackOverflow) => Fault::StackOverflow,
        Some(Trap::UnreachableCodeReached) => Fault::Panic(panic_message(output)),
        Some(trap) => Fault::Trap(trap.to_string()),
        None => Fault::Trap(error.to_string()),
    }
}

/// The message of the last Rust panic in a guest's output: the lines after
/// `panicked at <file:line:col>:` up to the `note:` the hook adds.
pub fn panic_message(output: &[u8]) -> Option<String> {
    let output = String::from_utf8_lossy(output);
    let (_, after) = output.rsplit_once(" panicked at ")?;
    let (_, rest) = after.split_once('\n')?;
    let message: Vec<&str> = rest
        .lines()
        .take_while(|line| !line.starts_with("note: "))
        .collect();
    let message = message.join("\n");
    let message = message.trim();
    (!message.is_empty()).then(|| message.to_owned())
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}
/// An error's text on one line: the parser's pretty-printed values
/// (`[\n    0x0,\n]`) folded, so a refusal reads as one log line.
fn one_line(text: &str) -> String {
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    folded
        .replace("[ ", "[")
        .replace(", ]", "]")
        .replace(" ]", "]")
}
