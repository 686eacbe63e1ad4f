//! The plugin's counters on `/metrics`, best-effort: a host that has no metrics, or refuses to
//! define or count one, costs the counts and nothing else. It never refuses the configuration
//! or turns a decision into a 500.

use portico_plugin_sdk::metrics::Counter;

/// A counter that may be missing.
#[derive(Debug, Clone, Copy)]
pub struct Metric(Option<Counter>);

impl Metric {
    /// The counter `name`; a host that cannot define it gives a counter that counts nothing.
    pub fn define(name: &str) -> Metric {
        Metric(host::define(name).ok())
    }

    /// Adds one, if the host lets it.
    pub fn count(self) {
        if let Some(counter) = self.0 {
            // A count that cannot be made is no reason to fail the request.
            let _ = host::increment(counter);
        }
    }
}

#[cfg(not(test))]
mod host {
    use portico_plugin_sdk::Result;
    use portico_plugin_sdk::metrics::Counter;

    pub fn define(name: &str) -> Result<Counter> {
        Counter::define(name)
    }

    pub fn increment(counter: Counter) -> Result<()> {
        counter.increment(1)
    }
}

/// The SDK's mock host always has metrics; tests break them here to play a host that has none.
#[cfg(test)]
pub mod host {
    use std::cell::Cell;

    use portico_plugin_sdk::metrics::Counter;
    use portico_plugin_sdk::{Error, Result};

    thread_local! {
        /// While set, defining and counting metrics fail, as on a host without metrics.
        pub static BROKEN: Cell<bool> = const { Cell::new(false) };
    }

    fn broken() -> Result<()> {
        if BROKEN.get() {
            return Err(Error::new("proxy_define_metric answered Unimplemented"));
        }
        Ok(())
    }

    pub fn define(name: &str) -> Result<Counter> {
        broken()?;
        Counter::define(name)
    }

    pub fn increment(counter: Counter) -> Result<()> {
        broken()?;
        counter.increment(1)
    }
}
