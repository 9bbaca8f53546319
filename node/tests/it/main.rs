//! Integration tests of the node, compiled as one binary.

mod cli;
mod crash;
mod differential;
mod facilitator;
mod fixture;
mod flow;
mod fuzz;
mod gateway;
mod gateway_binary;
mod lenient;
mod paywall;
mod process;
mod secrets;
