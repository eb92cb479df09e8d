//! schemathesis (PyPI) against a real `tincan up`: property-based requests
//! generated from /openapi.json must never get a 5xx, and the node must
//! still answer afterwards. Installs schemathesis (pinned) into a venv
//! beside the build the first time. `./x schemathesis [N]` runs the same
//! script by hand with N examples per operation.

use std::process::Command;

use tincan_tests::workspace_bin;

#[test]
fn schemathesis_finds_no_server_error() {
    let tincan = workspace_bin("tincan");
    assert!(
        tincan.exists(),
        "{} is missing: build the binaries first (./x test does)",
        tincan.display()
    );
    let target = tincan
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let venv = target.join("schemathesis-venv");
    let st = venv.join("bin/schemathesis");
    if !st.exists() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status();
        assert!(
            made.is_ok_and(|s| s.success()),
            "cannot make a Python venv at {}: run ./x bootstrap (it installs python3-venv)",
            venv.display()
        );
        let pip = Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "schemathesis==4.32.5",
            ])
            .status();
        assert!(
            pip.is_ok_and(|s| s.success()),
            "pip could not install schemathesis into {}",
            venv.display()
        );
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&tincan)
        .arg(&st)
        .arg("30")
        .output()
        .expect("run tests/schemathesis.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("schemathesis:") || l.starts_with("no voice"))
        .collect();
    println!("{}", summary.join("\n"));
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed"), "no test case ran:\n{stdout}");
}
