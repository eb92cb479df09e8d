//! The `tincan` command line as a user meets it: real processes, real data
//! directories, real redb files.

use tincan_tests::Tincan;

fn node(dir: &tempfile::TempDir, name: &str) -> Tincan {
    let t = Tincan::new(&dir.path().join(name), &format!("{name}-password"));
    t.ok(&["init", "--username", name]);
    t
}

#[test]
fn help_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tincan::new(dir.path(), "x");
    for args in [
        vec!["--help"],
        vec!["init", "--help"],
        vec!["up", "--help"],
        vec!["id", "--help"],
        vec!["id", "export", "--help"],
        vec!["id", "import", "--help"],
        vec!["id", "passwd", "--help"],
        vec!["room", "--help"],
        vec!["room", "create", "--help"],
        vec!["room", "list", "--help"],
        vec!["room", "show", "--help"],
        vec!["room", "join", "--help"],
        vec!["room", "member", "--help"],
        vec!["channel", "create", "--help"],
        vec!["channel", "list", "--help"],
        vec!["channel", "delete", "--help"],
        vec!["log", "add", "--help"],
        vec!["log", "list", "--help"],
        vec!["export", "--help"],
        vec!["import", "--help"],
        vec!["audio", "--help"],
        vec!["audio", "devices", "--help"],
        vec!["audio", "test", "--help"],
    ] {
        let out = t.ok(&args);
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
}

#[test]
fn init_id_and_up() {
    let dir = tempfile::tempdir().unwrap();
    let alice = node(&dir, "alice");
    let id = alice.json(&["id"]);
    assert_eq!(id["username"], "alice");
    assert_eq!(id["user_id"].as_str().unwrap().len(), 64);
    assert!(id["node_id"].as_str().unwrap().starts_with("12D3KooW"));
    let up = alice.json(&["up", "--once"]);
    assert_eq!(up["user_id"], id["user_id"]);
    assert_eq!(up["peer_id"], id["node_id"]);
    // up signs up when there is no identity yet.
    let fresh = Tincan::new(&dir.path().join("fresh"), "pw");
    let up = fresh.json(&["up", "--once", "--username", "carol"]);
    assert_eq!(up["username"], "carol");
    // A second init refuses to replace the identity.
    let err = alice.fails(&["init", "--username", "again"]);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn errors_are_one_clear_line_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let alice = node(&dir, "alice");
    let before = std::fs::read(alice.data_dir.join("identity.json")).unwrap();
    let wrong = Tincan::new(&alice.data_dir, "not-the-password");
    let err = wrong.fails(&["room", "create", "x"]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: wrong password"), "{err}");
    assert_eq!(
        std::fs::read(alice.data_dir.join("identity.json")).unwrap(),
        before
    );
    assert_eq!(alice.json(&["room", "list"]), serde_json::json!([]));

    let err = alice.fails(&["room", "show", "zzzz"]);
    assert_eq!(err.lines().count(), 1, "{err}");
    let nobody = Tincan::new(&dir.path().join("nobody"), "pw");
    let err = nobody.fails(&["room", "create", "x"]);
    assert!(err.contains("tincan init"), "{err}");
    // No password and no terminal: a clear error, not a hang.
    let out = alice
        .cmd()
        .env_remove("TINCAN_PASSWORD")
        .args(["room", "create", "x"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TINCAN_PASSWORD"));
}

#[test]
fn rooms_channels_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let alice = node(&dir, "alice");
    let room = alice.json(&["room", "create", "LAN party", "--member-limit", "8"]);
    let rid = room["id"].as_str().unwrap().to_owned();
    let short = &rid[..6];
    let ch = alice.json(&[
        "channel",
        "create",
        short,
        "general",
        "--description",
        "main",
    ]);
    alice.ok(&[
        "channel",
        "create",
        short,
        "quiet",
        "--permission",
        "speak:owner",
        "--permission",
        "listen:members",
    ]);
    let err = alice.fails(&[
        "channel",
        "create",
        short,
        "bad",
        "--permission",
        "shout:everyone",
    ]);
    assert!(err.contains("unknown action"), "{err}");
    let chans = alice.json(&["channel", "list", short]);
    assert_eq!(chans.as_array().unwrap().len(), 2);

    for i in 0..7 {
        alice.ok(&["log", "add", short, &format!("event {i}")]);
    }
    let page = alice.json(&["log", "list", short, "--limit", "5"]);
    assert_eq!(page["entries"].as_array().unwrap().len(), 5);
    let next = page["next"].as_str().unwrap().to_owned();
    let page2 = alice.json(&["log", "list", short, "--limit", "5", "--after", &next]);
    let actions: Vec<_> = page2["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["event 5", "event 6"]);

    alice.ok(&["channel", "delete", short, ch["channel"].as_str().unwrap()]);
    assert_eq!(
        alice
            .json(&["channel", "list", short])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let shown = alice.json(&["room", "show", short]);
    assert_eq!(shown["title"], "LAN party");
    assert_eq!(shown["member_limit"], 8);
    assert_eq!(shown["members"][0]["owner"], true);
}

#[test]
fn export_import_and_rules_across_two_users() {
    let dir = tempfile::tempdir().unwrap();
    let alice = node(&dir, "alice");
    let bob = node(&dir, "bob");
    let rid = alice.json(&["room", "create", "Alice's room"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.ok(&["channel", "create", &rid, "general"]);
    let bundle = dir.path().join("alice.json");
    alice.ok(&["export", "--out", bundle.to_str().unwrap()]);

    let report = bob.json(&["import", bundle.to_str().unwrap()]);
    assert_eq!(report["outcomes"]["stored"], 3, "{report}"); // profile, room, channel
    assert_eq!(report["refused"].as_array().unwrap().len(), 0);
    // Importing again changes nothing.
    let again = bob.json(&["import", bundle.to_str().unwrap()]);
    assert_eq!(again["outcomes"]["duplicate"], 3, "{again}");

    // Bob may not delete Alice's channel, nor add a log entry before joining.
    let err = bob.fails(&["channel", "delete", &rid, "general"]);
    assert!(err.contains("only the owner"), "{err}");
    assert_eq!(
        bob.json(&["channel", "list", &rid])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let err = bob.fails(&["log", "add", &rid, "hi"]);
    assert!(err.contains("not a member"), "{err}");
    assert_eq!(bob.json(&["room", "join", &rid])["state"], "joined");
    bob.ok(&["log", "add", &rid, "hi from bob"]);

    // A tampered bundle: the bad record is refused by name, the rest applied.
    let mut b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bundle).unwrap()).unwrap();
    let first = b["records"][0].as_str().unwrap().to_owned();
    let mut chars: Vec<char> = first.chars().collect();
    let n = chars.len();
    chars[n - 5] = if chars[n - 5] == 'A' { 'B' } else { 'A' };
    b["records"][0] = serde_json::Value::String(chars.into_iter().collect());
    b["records"]
        .as_array_mut()
        .unwrap()
        .push("not base64!".into());
    let tampered = dir.path().join("tampered.json");
    std::fs::write(&tampered, b.to_string()).unwrap();
    let carol = node(&dir, "carol");
    let report = carol.json(&["import", tampered.to_str().unwrap()]);
    let refused = report["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 2, "{report}");
    assert!(
        refused[0].as_str().unwrap().starts_with("record 0:"),
        "{report}"
    );
    let err = carol.fails(&["import", "/nonexistent/bundle.json"]);
    assert!(err.contains("cannot read"), "{err}");
    std::fs::write(&tampered, "{not json").unwrap();
    let err = carol.fails(&["import", tampered.to_str().unwrap()]);
    assert!(err.contains("not a tincan record bundle"), "{err}");
}

/// `tincan id export --out to` with the export password `export-pw`.
fn export_identity(t: &Tincan, to: &std::path::Path) {
    let out = t
        .cmd()
        .env("TINCAN_EXPORT_PASSWORD", "export-pw")
        .args(["id", "export", "--out", to.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn identity_export_import_and_password_change() {
    let dir = tempfile::tempdir().unwrap();
    let alice = node(&dir, "alice");
    let id = alice.json(&["id"]);
    let backup = dir.path().join("alice.identity");
    export_identity(&alice, &backup);

    // A second device: same user, its own node key.
    let laptop = Tincan::new(&dir.path().join("laptop"), "laptop-pw");
    let wrong = laptop
        .cmd()
        .env("TINCAN_EXPORT_PASSWORD", "wrong")
        .args(["id", "import", backup.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong password"));
    assert!(
        !laptop.data_dir.join("identity.json").exists(),
        "a failed import wrote something"
    );
    let out = laptop
        .cmd()
        .env("TINCAN_EXPORT_PASSWORD", "export-pw")
        .args(["id", "import", backup.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lid: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(lid["user_id"], id["user_id"]);
    assert_ne!(lid["node_id"], id["node_id"]);
    laptop.ok(&["room", "create", "from the laptop"]);

    // Password change: the old one stops working, the new one works.
    let out = alice
        .cmd()
        .env("TINCAN_NEW_PASSWORD", "new-pw")
        .args(["id", "passwd"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        alice
            .fails(&["room", "create", "x"])
            .contains("wrong password")
    );
    Tincan::new(&alice.data_dir, "new-pw").ok(&["room", "create", "x"]);
}

#[test]
fn a_damaged_store_is_reported_not_reset() {
    let dir = tempfile::tempdir().unwrap();
    let alice = node(&dir, "alice");
    let store = alice.data_dir.join("store.redb");
    std::fs::write(&store, b"definitely not a database").unwrap();
    let err = alice.fails(&["room", "list"]);
    assert!(err.contains("not a tincan store or is damaged"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(std::fs::read(&store).unwrap(), b"definitely not a database");
}

/// A data directory whose store or identity is damaged or gone is refused
/// with the file's name and what to do, and nothing on disk changes: a
/// 0-byte store.redb (redb made a new store of it), a deleted store.redb
/// beside the identity (a new empty store was made), a deleted
/// identity.json beside the store (`init` and `up` signed up a new
/// identity). All three went through without a word on the old code.
#[test]
fn damaged_data_directories_are_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let alice = node(&dir, "alice");
    alice.ok(&["room", "create", "kept"]);
    let store = alice.data_dir.join("store.redb");
    let identity = alice.data_dir.join("identity.json");
    let backup = dir.path().join("alice.identity");
    export_identity(&alice, &backup);
    let good_store = std::fs::read(&store).unwrap();

    // A 0-byte store.
    std::fs::write(&store, b"").unwrap();
    for args in [
        &["room", "list"][..],
        &["room", "create", "x"],
        &["up", "--once"],
    ] {
        let err = alice.fails(args);
        assert!(
            err.contains("store.redb is empty (0 bytes)"),
            "{args:?}: {err}"
        );
        assert!(err.contains("--new-store"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(std::fs::metadata(&store).unwrap().len(), 0, "{args:?}");
    }

    // No store beside the identity.
    std::fs::remove_file(&store).unwrap();
    for args in [
        &["room", "list"][..],
        &["room", "create", "x"],
        &["up", "--once"],
    ] {
        let err = alice.fails(args);
        assert!(
            err.contains("store.redb is missing beside the identity"),
            "{args:?}: {err}"
        );
        assert!(err.contains("--new-store"), "{err}");
        assert!(!store.exists(), "{args:?} made a store");
    }
    // Asked for: an empty store for the same identity.
    alice.ok(&["--new-store", "room", "create", "anew"]);
    assert!(store.exists());
    std::fs::write(&store, &good_store).unwrap();
    let rooms = alice.json(&["room", "list"]);
    assert_eq!(rooms.as_array().unwrap().len(), 1, "{rooms}");

    // No identity beside the store (as it is now: opening it rewrote its
    // header, so compare with what is on disk at this point).
    std::fs::remove_file(&identity).unwrap();
    let kept_store = std::fs::read(&store).unwrap();
    for args in [
        &["init", "--username", "mallory"][..],
        &["up", "--once", "--username", "mallory"],
        &["room", "create", "x"],
    ] {
        let err = alice.fails(args);
        assert!(
            err.contains("identity.json is missing beside the store"),
            "{args:?}: {err}"
        );
        assert!(err.contains("tincan id import"), "{err}");
        assert!(!identity.exists(), "{args:?} made an identity");
        assert!(
            std::fs::read(&store).unwrap() == kept_store,
            "{args:?} changed store.redb"
        );
    }
    // The way back: import the identity the store belongs to.
    let out = alice
        .cmd()
        .env("TINCAN_EXPORT_PASSWORD", "export-pw")
        .args(["id", "import", backup.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rooms = alice.json(&["room", "list"]);
    assert_eq!(rooms.as_array().unwrap().len(), 1, "{rooms}");
}
