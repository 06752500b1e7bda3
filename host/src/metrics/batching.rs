//! How well the shared backend work is shared: the cache's sweeps and the
//! graph's write transactions, read from the backends at each scrape.
//!
//! `rate(switchyard_cache_sweep_calls_total) /
//! rate(switchyard_cache_sweeps_total)` is how many invalidations one
//! sweep of the keyspace served; `rate(switchyard_graph_rows_written_total)
//! / rate(switchyard_graph_transactions_total)` how many upserts one
//! transaction carried. Both are per process: the backends serve every
//! handler. A backend without a sweeper (`memory://`) or without batched
//! writes leaves its series at zero.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use crate::backend::{SweepTotals, WriteTotals};

pub struct Batching {
    sweeps: Counter,
    sweep_calls: Counter,
    sweep_keys_visited: Counter,
    transactions: Counter,
    rows_written: Counter,
}

impl Batching {
    /// Registers the series in `registry` (the `switchyard` one).
    pub fn register(registry: &mut Registry) -> Self {
        let batching = Batching {
            sweeps: Counter::default(),
            sweep_calls: Counter::default(),
            sweep_keys_visited: Counter::default(),
            transactions: Counter::default(),
            rows_written: Counter::default(),
        };
        registry.register(
            "cache_sweeps",
            "Sweeps of the cache's keyspace run for delete-matching",
            batching.sweeps.clone(),
        );
        registry.register(
            "cache_sweep_calls",
            "delete-matching calls the sweeps served (many per sweep when shared)",
            batching.sweep_calls.clone(),
        );
        registry.register(
            "cache_sweep_keys_visited",
            "Keys the sweeps read from the cache",
            batching.sweep_keys_visited.clone(),
        );
        registry.register(
            "graph_transactions",
            "Batched graph write transactions sent (a retry counts again)",
            batching.transactions.clone(),
        );
        registry.register(
            "graph_rows_written",
            "Graph upserts committed by those transactions",
            batching.rows_written.clone(),
        );
        batching
    }

    /// Brings the counters up to the backends' totals.
    pub fn refresh(&self, sweeps: Option<SweepTotals>, writes: Option<WriteTotals>) {
        if let Some(totals) = sweeps {
            raise(&self.sweeps, totals.sweeps);
            raise(&self.sweep_calls, totals.calls);
            raise(&self.sweep_keys_visited, totals.keys_visited);
        }
        if let Some(totals) = writes {
            raise(&self.transactions, totals.transactions);
            raise(&self.rows_written, totals.rows);
        }
    }
}

/// A counter follows a running total: it only ever goes up to it.
fn raise(counter: &Counter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}
