//! netc's compiler: `.net` text → syntax → AST → check → IR → autodiff → backends.
//!
//! The stages are separate modules and each only talks to its neighbours: pest pairs never leave
//! `syntax`, spans never reach the IR, and backends never report user errors (see
//! `docs/ARCHITECTURE.md`).

pub mod ast;
pub mod autodiff;
pub mod backend;
pub mod check;
pub mod diagnostics;
pub mod init;
pub mod interp;
pub mod ir;
pub mod jit;
pub mod lower;
pub mod optim;
pub mod print;
pub mod rng;
pub mod syntax;
