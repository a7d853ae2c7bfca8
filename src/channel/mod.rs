//! Per-channel state machines (sans-IO): what each channel must answer, and the
//! counters reports and logs are built from.

pub mod counters;
