//! Container networking: bridge, host and none modes, and published ports.
pub mod portmap;
