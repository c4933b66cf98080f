//! Who may do what. So far: who a caller is ([`identity`]); the
//! permission checks of DESIGN §4 are to gather here.

pub mod identity;

pub use identity::Identity;
