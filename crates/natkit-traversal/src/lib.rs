//! Sans-I/O cores of natkit's NAT traversal.
#![warn(missing_docs)]
#![forbid(unsafe_code)]
