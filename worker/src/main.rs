//! Coffer worker (skeleton). The lease session and data movement arrive with the
//! workers issue; until then this binary only says so.

fn main() {
    eprintln!("coffer-worker: the worker protocol is not implemented yet; see README.md");
    std::process::exit(2);
}
