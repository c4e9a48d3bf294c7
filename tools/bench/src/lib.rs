//! The protocol clients of wmail-bench, shared with the fault-injection harness
//! (`wmail-jepsen`): a small IMAP client and a pipelining SMTP sender.

pub mod imap;
pub mod smtp;
