//! Where passwords come from: a file, an environment variable or a prompt,
//! in that order. Never from a command-line argument, which other users of
//! the machine can read in the process list.

use std::path::Path;

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

/// A source of a password.
#[derive(Clone, Debug)]
pub struct PasswordSource<'a> {
    /// `--password-file`, if given.
    pub file: Option<&'a Path>,
    /// The environment variable to read.
    pub env: &'static str,
    /// The prompt shown on a terminal.
    pub prompt: &'static str,
}

impl PasswordSource<'_> {
    /// Reads the password. With `confirm`, a prompt asks twice.
    pub fn read(&self, confirm: bool) -> Result<Zeroizing<String>> {
        if let Some(path) = self.file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read password file {}", path.display()))?;
            let pw = text.strip_suffix('\n').unwrap_or(&text);
            let pw = pw.strip_suffix('\r').unwrap_or(pw);
            return non_empty(Zeroizing::new(pw.to_owned()));
        }
        if let Ok(pw) = std::env::var(self.env) {
            return non_empty(Zeroizing::new(pw));
        }
        if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            bail!(
                "a password is needed and there is no terminal to ask on: set {} or pass --password-file",
                self.env
            );
        }
        let first = Zeroizing::new(rpassword::prompt_password(self.prompt)?);
        if confirm {
            let again = Zeroizing::new(rpassword::prompt_password("Repeat the password: ")?);
            if *first != *again {
                bail!("the two passwords differ; nothing was changed");
            }
        }
        non_empty(first)
    }
}

fn non_empty(pw: Zeroizing<String>) -> Result<Zeroizing<String>> {
    if pw.is_empty() {
        bail!("the password is empty");
    }
    Ok(pw)
}
