//! Sans-I/O cores of natkit's NAT traversal.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod classify;
pub mod limits;
pub mod plan;
pub mod punch;
