//! The commands this worker runs: `COFFER_WORKER_ALLOW_COMMANDS`, a comma
//! separated list of command names, each optionally pinned to its program
//! (`pg-dump=/usr/bin/pg_dump`). Nothing is allowed by default, so a
//! compromised catalog or control plane cannot turn a worker into a remote
//! shell: it can only ask for a command the operator named, and for a pinned
//! one only with that program.

use std::collections::BTreeMap;

use super::spawn::Invocation;

/// Allowed command names, each with the program it is pinned to, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandAllowList {
    allowed: BTreeMap<String, Option<String>>,
}

impl CommandAllowList {
    /// Parses `name[=/absolute/program],...`; empty allows nothing.
    pub fn parse(list: &str) -> anyhow::Result<Self> {
        let mut allowed = BTreeMap::new();
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, program) = match item.split_once('=') {
                Some((name, program)) => (name.trim(), Some(program.trim())),
                None => (item, None),
            };
            if name.is_empty() {
                anyhow::bail!("allowed command {item:?} has no name");
            }
            if let Some(program) = program {
                if crate::paths::normalise(program).is_err() {
                    anyhow::bail!(
                        "allowed command {name:?}: program {program:?} is not a normalised \
                         absolute path"
                    );
                }
            }
            allowed.insert(name.to_string(), program.map(str::to_string));
        }
        Ok(CommandAllowList { allowed })
    }

    /// Whether no command is allowed.
    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty()
    }

    /// Refuses a command the operator did not allow, or a pinned one asked
    /// for with another program.
    pub fn check(&self, invocation: &Invocation) -> Result<(), String> {
        match self.allowed.get(&invocation.name) {
            None => Err(format!(
                "command {:?} is not allowed on this worker (COFFER_WORKER_ALLOW_COMMANDS)",
                invocation.name
            )),
            Some(Some(program)) if *program != invocation.executable.to_string_lossy() => {
                Err(format!(
                    "command {:?} is allowed on this worker only as {program}, not as {}",
                    invocation.name,
                    invocation.executable.display()
                ))
            }
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation(name: &str, executable: &str) -> Invocation {
        Invocation {
            name: name.into(),
            executable: executable.into(),
            ..Invocation::default()
        }
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        let list = CommandAllowList::parse("").expect("empty list");
        assert!(list.is_empty());
        assert!(list
            .check(&invocation("pg-dump", "/usr/bin/pg_dump"))
            .is_err());
    }

    #[test]
    fn pinned_commands_run_only_their_program() {
        let list = CommandAllowList::parse("quiesce, pg-dump=/usr/bin/pg_dump").expect("valid");
        assert!(list.check(&invocation("quiesce", "/opt/quiesce")).is_ok());
        assert!(list
            .check(&invocation("pg-dump", "/usr/bin/pg_dump"))
            .is_ok());
        let refused = list
            .check(&invocation("pg-dump", "/bin/sh"))
            .expect_err("another program");
        assert!(refused.contains("only as /usr/bin/pg_dump"), "{refused}");
        assert!(list.check(&invocation("other", "/bin/true")).is_err());
    }

    #[test]
    fn pins_must_be_absolute() {
        assert!(CommandAllowList::parse("a=pg_dump").is_err());
        assert!(CommandAllowList::parse("=/bin/true").is_err());
    }
}
