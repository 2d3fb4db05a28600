//! netc runtime
