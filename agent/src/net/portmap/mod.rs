//! Published ports (placeholder; see the portmap work).
