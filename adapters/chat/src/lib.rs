//! Web chat channel (skeleton; being built).
use switchboard_core::AdapterRegistry;

/// Registers the `webchat` adapter kind.
pub fn register(_registry: &mut AdapterRegistry) {}
