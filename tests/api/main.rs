//! The integration suite: one binary, each test with its own database, upstream and gateway
//! process on real sockets. Needs DATABASE_URL (scripts/test.sh starts a throwaway server).

mod helpers;

mod anonymous;
mod audit_writer;
mod blackhole;
mod cli;
mod cockpit;
mod coherence;
mod cookie_differential;
mod core;
mod cutover;
mod differential;
mod durability;
mod edge;
mod explain_agrees;
mod explain_request;
mod faults;
mod framing;
mod grants;
mod heroku;
mod hostile;
mod identity;
mod invariants;
mod lifecycle;
mod lifecycle_jobs;
mod live;
mod mapping;
mod mapping_store;
mod mapping_tests;
mod order_differential;
mod planted;
mod pooler;
mod reader;
mod refusals;
mod round_trips;
mod signals;
mod sql_text;
mod supervision;
mod telemetry;
mod tickets;
mod trust_boundary;
mod upgrade;
mod upstream_differential;
