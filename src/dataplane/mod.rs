//! Wire mechanics under the doors. Where a module replaces a standard part, its doc names the
//! crate, the measured gain, and the differential test that pins its behaviour to the crate's
//! or to a reference.

pub mod header_timer;
pub mod listen;
pub mod sniff;
pub mod upstream;
pub mod workers;
