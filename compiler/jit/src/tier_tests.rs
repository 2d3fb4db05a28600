//! Differential tests of the vector tiers: dense programs of odd shapes, on every tier this CPU
//! has, against the interpreter.
