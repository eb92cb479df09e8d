//! Helpers for tincan's end-to-end tests: run the real `tincan` binary in a
//! private data directory and read what it says.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of a binary built by cargo for this workspace (`tincan`,
/// `crash-writer`), next to the test executable.
pub fn workspace_bin(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("test executable path");
    dir.pop(); // the test binary
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// A `tincan` invocation with its own data directory and password.
pub struct Tincan {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The password it unlocks with.
    pub password: String,
}

impl Tincan {
    /// A node in `dir` with `password`.
    pub fn new(dir: &Path, password: &str) -> Self {
        Tincan {
            data_dir: dir.to_path_buf(),
            password: password.to_owned(),
        }
    }

    /// The command, ready for arguments.
    pub fn cmd(&self) -> Command {
        let bin = workspace_bin("tincan");
        assert!(
            bin.exists(),
            "{} is missing: build it first (cargo build -p tincan, or run the whole suite with ./x test)",
            bin.display()
        );
        let mut c = Command::new(bin);
        c.env("TINCAN_DATA_DIR", &self.data_dir)
            .env("TINCAN_PASSWORD", &self.password)
            .env_remove("TINCAN_USERNAME")
            .env_remove("TINCAN_EXPORT_PASSWORD")
            .env_remove("RUST_LOG");
        c
    }

    /// Runs with `args` and returns the output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run tincan")
    }

    /// Runs with `args`, requires success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tincan {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs with `args` and `--json`, requires success, parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.ok(&a);
        serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("{args:?} printed {text:?}: {e}"))
    }

    /// Runs with `args`, requires failure, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "tincan {args:?} should have failed");
        String::from_utf8(out.stderr).expect("utf-8 output")
    }
}
