//! lessor, a dynamic credential broker.
pub mod lease;
pub mod store;
