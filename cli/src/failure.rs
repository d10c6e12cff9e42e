//! How a command fails: what is printed and the exit code.
//!
//! Exit codes: 0 success; 1 a run ended without succeeding; 2 the command line
//! is wrong; 3 the server refused the request (its code and field violations
//! are printed); 4 anything else (config, files, connection).

use std::fmt;

use tonic_types::StatusExt as _;

/// The command line is wrong in a way clap cannot see.
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A run the command waited for ended in another state than succeeded.
#[derive(Debug)]
pub struct RunNotSucceeded {
    pub id: String,
    pub state: String,
    pub error: String,
}

impl fmt::Display for RunNotSucceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "run {} ended {}", self.id, self.state)?;
        if !self.error.is_empty() {
            write!(f, ": {}", crate::output::printable(&self.error))?;
        }
        Ok(())
    }
}

impl std::error::Error for RunNotSucceeded {}

/// Exit code for an error that ended a command.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<RunNotSucceeded>().is_some() {
        1
    } else if error.downcast_ref::<Usage>().is_some() {
        2
    } else if status_of(error).is_some_and(|s| s.code() != tonic::Code::Unavailable) {
        3
    } else {
        4
    }
}

fn status_of(error: &anyhow::Error) -> Option<&tonic::Status> {
    error
        .chain()
        .find_map(|e| e.downcast_ref::<tonic::Status>())
}

/// The lines printed on stderr for an error: the server's code and message,
/// then each field violation on a line of its own.
pub fn render(error: &anyhow::Error) -> String {
    let Some(status) = status_of(error) else {
        return format!("error: {error:#}\n");
    };
    let mut text = String::from("error: ");
    // What the command was doing, when it said so.
    for context in error
        .chain()
        .take_while(|e| e.downcast_ref::<tonic::Status>().is_none())
    {
        text.push_str(&format!("{context}: "));
    }
    let printable = crate::output::printable;
    text.push_str(&format!(
        "{:?}: {}\n",
        status.code(),
        printable(status.message())
    ));
    if let Some(bad_request) = status.get_details_bad_request() {
        for violation in bad_request.field_violations {
            text.push_str(&format!(
                "  {}: {}\n",
                printable(&violation.field),
                printable(&violation.description)
            ));
        }
    }
    text
}
