//! Integration tests of the node, compiled as one binary.

mod cli;
mod differential;
mod facilitator;
mod fixture;
mod flow;
mod fuzz;
mod gateway;
mod lenient;
mod paywall;
mod power_cut;
