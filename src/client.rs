//! The socket client the CLI, the tests and the benchmarks use: the
//! `lessor-client` crate's, which applications use too, so all of them
//! exercise the same path.

pub use lessor_client::{lease_path, ApiError, Client, ClientError, Response};
