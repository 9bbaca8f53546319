//! Everything the binary prints goes through here: results on stdout, notes and errors on
//! stderr (the workspace lints ban bare prints elsewhere).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fmt::Display;

/// A line of the command's result, on stdout.
pub(crate) fn line(text: impl Display) {
    println!("{text}");
}

/// A note about what is happening, on stderr.
pub(crate) fn note(text: impl Display) {
    eprintln!("{text}");
}

/// Where the demo tells its story.
pub(crate) fn story() -> std::io::Stdout {
    std::io::stdout()
}
