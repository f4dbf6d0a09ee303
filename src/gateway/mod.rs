//! The gateway's shared state and what keeps it current: [`state::Gateway`] (the live mapping,
//! the identity resolver and its caches, the audit writer, metrics, the settings of the data
//! plane), which is the [`crate::policy::outcome::Authority`] the decision asks and the
//! [`crate::policy::answer::Records`] its aftermath writes through; and [`reload`], the mapping
//! swapped in whole from the file or the database. It wires the policy to the stores; the doors
//! carry its answers, and `serve` (`cli/serve/`) assembles it all.

pub mod anonymous;
pub mod counts;
pub mod promotion;
pub mod reader;
pub mod reload;
pub mod state;
