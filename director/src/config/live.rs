//! The running configuration: one cell that SIGHUP replaces, read by every
//! task, with a generation number and a watch so that tasks can tell (and
//! wake on) a reload.

use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::Config;

/// The running configuration; SIGHUP replaces it.
#[derive(Debug)]
pub struct ConfigCell {
    current: RwLock<Arc<Config>>,
    /// Raised on every replacement.
    generation: watch::Sender<u64>,
}

impl ConfigCell {
    /// A cell holding `config` (generation 0).
    pub fn new(config: Config) -> Self {
        ConfigCell {
            current: RwLock::new(Arc::new(config)),
            generation: watch::Sender::new(0),
        }
    }

    /// The configuration now.
    pub fn get(&self) -> Arc<Config> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// How many times the configuration was replaced.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Wakes on every replacement.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Replaces the configuration.
    pub fn set(&self, config: Config) {
        match self.current.write() {
            Ok(mut c) => *c = Arc::new(config),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(config),
        }
        self.generation.send_modify(|g| *g += 1);
    }
}
