//! The plugin protocol on the wire: the messages and the gRPC client and
//! server generated from `schemas/proto/lessor/plugin/v1/plugin.proto`,
//! the constants of the handshake, and the conversions between the
//! messages and this crate's types (one place, used by both the broker's
//! side and [`crate::serve`]).

mod convert;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("lessor.plugin.v1");
}

pub use convert::{
    credential_from_wire, credential_to_wire, error_from_wire, error_to_wire, json_to_options, ms_to_time,
    options_to_json, time_to_ms,
};

/// The one line a plugin prints on stdout once it serves its socket:
/// protocol name, version, transport.
pub const HANDSHAKE: &str = "lessor-plugin 1 grpc";

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The environment variable that names the socket a plugin serves on.
pub const SOCKET_ENV: &str = "LESSOR_PLUGIN_SOCKET";

/// The longest message either side accepts: a `ListUsers` answer of a
/// backend with a hundred thousand users fits with room to spare.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
