//! netc's intermediate representation and everything defined on it alone: the program
//! (`ir`), the backward pass derived from it (`autodiff`), the update rules (`optim`), the
//! initializers (`init`), the counter-based random numbers every backend draws from (`rng`),
//! and the `Backend` trait the runtime drives (`backend`).
//!
//! Architecture invariant: this crate knows no syntax, span or diagnostic. Whatever a user must
//! be told about is decided by the front end before a `Program` exists; a program is valid by
//! construction, and a `BackendError` means a bug in netc or a host that cannot run it.

#![warn(missing_docs)]

pub mod autodiff;
pub mod backend;
pub mod cores;
pub mod init;
pub mod ir;
pub mod optim;
pub mod rng;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
