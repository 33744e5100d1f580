//! Negotiation with the cloud (edge-policies §0): the `hello` sent on every connect and the
//! grant of the last applied `set_wire_options`, kept in state.db's `meta` table.
//!
//! Until a cloud grants `snapshot_markers` the agent never puts snapshot fields on the wire: an
//! older cloud rejects the `hello` (a named rejection in its ledger, nothing published back), so
//! nothing is ever granted and snapshots stay exactly as protocol.md describes them.

use edge_protocol::wire::{Hello, WireOptions, FEATURE_SNAPSHOT_MARKERS};

use crate::state::{StateDb, StateError};

/// `meta` key of the applied grant (JSON of [`WireOptions`]).
pub const META_KEY: &str = "wire_options";

/// Staleness key of the `wire` control family (reliability.md §1) in `control_applied`: a NUL
/// cannot be in a table name (refused as `invalid_identifier`), so it never collides with one.
pub const WIRE_FAMILY_KEY: &str = "\u{0}wire";

/// The grant last applied (empty before any).
pub fn granted(state: &StateDb) -> Result<WireOptions, StateError> {
    Ok(state
        .meta(META_KEY)?
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default())
}

/// Persists `options` as the applied grant (the caller's state.db transaction).
pub fn store(state: &StateDb, options: &WireOptions) -> Result<(), StateError> {
    let text = serde_json::to_string(options).unwrap_or_else(|_| "{}".into());
    state.set_meta(META_KEY, &text)
}

/// True when snapshots run with end markers.
pub fn snapshot_markers(state: &StateDb) -> Result<bool, StateError> {
    Ok(granted(state)?.has(FEATURE_SNAPSHOT_MARKERS))
}

/// The `hello` of this agent.
pub fn hello(state: &StateDb) -> Result<Hello, StateError> {
    Ok(Hello::new(env!("CARGO_PKG_VERSION"), granted(state)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn grant_round_trips_through_state_db() {
        let state = StateDb::open_in_memory().unwrap();
        assert!(!snapshot_markers(&state).unwrap());
        assert_eq!(hello(&state).unwrap().granted, WireOptions::default());
        let g = edge_protocol::wire::grant_for(&[]);
        store(&state, &g).unwrap();
        assert!(snapshot_markers(&state).unwrap());
        assert_eq!(hello(&state).unwrap().granted, g);
    }
}
